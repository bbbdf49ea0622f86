//! Envoy xDS for toolmesh (being written).
