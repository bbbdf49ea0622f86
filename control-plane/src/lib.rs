//! toolmesh: the control plane.
