//! Per-stream ADS state as plain data: what one Envoy subscribed to, what was sent, what it
//! accepted. No gRPC here, so every protocol rule is a unit test (quilkin's `ClientTracker` is the
//! model).
//!
//! The state-of-the-world rules this implements (from the xDS protocol spec, section "ACK/NACK
//! and resource type instance version", and verified against Envoy 1.40):
//! - A request with an **empty nonce** is a new subscription (first request of a stream, or a
//!   reconnect that carries the last version Envoy accepted from *any* server): always answer it,
//!   even when `version_info` equals the current version; a restarted control plane cannot know
//!   what Envoy holds.
//! - A request whose nonce is **not the last one sent** for that type is stale (it answers an
//!   older response) and is ignored.
//! - **ACK**: nonce is the last one sent, no `error_detail`. The sent version is committed. An ACK
//!   is never answered (that would loop), unless it also changes the subscribed names.
//! - **NACK**: nonce is the last one sent, `error_detail` set; `version_info` is the last version
//!   Envoy *accepted*. The rejection is recorded, nothing is re-sent: Envoy keeps its last good
//!   config and the next snapshot change produces a new version.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use crate::resources::{ResourceType, Snapshot};

/// The longest NACK reason kept (Envoy can include a large proto dump).
const MAX_REASON_CHARS: usize = 2048;

/// Who is on the other end of a stream (from the first request's `node`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct NodeInfo {
    /// `node.id`.
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
}

/// One rejected response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Nack {
    /// The resource type URL.
    pub type_url: String,
    /// The version that was rejected.
    pub version: String,
    /// Envoy's reason (the tail of `error_detail.message`, see [`nack_reason`]).
    pub message: String,
    /// When the NACK arrived.
    pub at: DateTime<Utc>,
}

/// What a request meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A (re)subscription: empty nonce.
    Subscribe,
    /// The last response of this type was accepted.
    Ack {
        /// The accepted version.
        version: String,
    },
    /// The last response of this type was rejected.
    Nack(Nack),
    /// The request answers an older response; ignored.
    Stale,
    /// A type toolmesh does not serve.
    Unsupported,
}

/// The tracker's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The request's type, if served.
    pub ty: Option<ResourceType>,
    /// What the request meant.
    pub event: Event,
    /// Whether the current resources of `ty` must be sent now.
    pub respond: bool,
}

#[derive(Debug, Clone, Default)]
struct TypeState {
    subscribed: bool,
    names: BTreeSet<String>,
    sent_version: Option<String>,
    sent_nonce: Option<String>,
    acked: Option<String>,
}

impl TypeState {
    fn wildcard(&self, ty: ResourceType) -> bool {
        ty.is_wildcard() && (self.names.is_empty() || self.names.contains("*"))
    }
}

/// The ADS state of one Envoy stream.
#[derive(Debug, Clone, Default)]
pub struct StreamTracker {
    node: Option<NodeInfo>,
    types: BTreeMap<ResourceType, TypeState>,
    next_nonce: u64,
    last_nack: Option<Nack>,
}

impl StreamTracker {
    /// A tracker for a new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node, once a request carried it.
    pub fn node(&self) -> Option<&NodeInfo> {
        self.node.as_ref()
    }

    /// The version Envoy accepted for each type it acknowledged on this stream.
    pub fn acked_versions(&self) -> BTreeMap<ResourceType, String> {
        self.types
            .iter()
            .filter_map(|(ty, st)| st.acked.clone().map(|v| (*ty, v)))
            .collect()
    }

    /// The most recent rejection on this stream.
    pub fn last_nack(&self) -> Option<&Nack> {
        self.last_nack.as_ref()
    }

    /// Interpret one request from Envoy.
    pub fn on_request(&mut self, req: &DiscoveryRequest, now: DateTime<Utc>) -> Outcome {
        if self.node.is_none()
            && let Some(n) = &req.node
        {
            self.node = Some(NodeInfo {
                id: n.id.clone(),
                cluster: n.cluster.clone(),
            });
        }
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            return Outcome {
                ty: None,
                event: Event::Unsupported,
                respond: false,
            };
        };
        let st = self.types.entry(ty).or_default();
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();

        if req.response_nonce.is_empty() {
            st.names = names;
            st.subscribed = ty.is_wildcard() || !st.names.is_empty();
            return Outcome {
                ty: Some(ty),
                event: Event::Subscribe,
                respond: st.subscribed,
            };
        }
        if st.sent_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            return Outcome {
                ty: Some(ty),
                event: Event::Stale,
                respond: false,
            };
        }
        let names_changed = names != st.names;
        st.names = names;
        st.subscribed = ty.is_wildcard() || !st.names.is_empty();
        let respond = names_changed && st.subscribed;
        match &req.error_detail {
            Some(status) => {
                let nack = Nack {
                    type_url: req.type_url.clone(),
                    version: st.sent_version.clone().unwrap_or_default(),
                    message: nack_reason(&status.message),
                    at: now,
                };
                self.last_nack = Some(nack.clone());
                Outcome {
                    ty: Some(ty),
                    event: Event::Nack(nack),
                    respond,
                }
            }
            None => {
                // The spec has Envoy echo the version it applied; trust the version we sent
                // under this nonce, which is what it applied.
                let version = st
                    .sent_version
                    .clone()
                    .unwrap_or_else(|| req.version_info.clone());
                st.acked = Some(version.clone());
                Outcome {
                    ty: Some(ty),
                    event: Event::Ack { version },
                    respond,
                }
            }
        }
    }

    /// The response carrying `snapshot`'s resources of type `ty` for this stream's subscription,
    /// recording its version and nonce; `None` if the stream is not subscribed to `ty`.
    pub fn response(&mut self, ty: ResourceType, snapshot: &Snapshot) -> Option<DiscoveryResponse> {
        let st = self.types.get_mut(&ty)?;
        if !st.subscribed {
            return None;
        }
        let ts = snapshot.get(ty);
        let wildcard = st.wildcard(ty);
        let resources = ts
            .resources
            .iter()
            .filter(|r| wildcard || st.names.contains(&r.name))
            .map(|r| r.resource.clone())
            .collect();
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        st.sent_version = Some(ts.version.clone());
        st.sent_nonce = Some(nonce.clone());
        Some(DiscoveryResponse {
            version_info: ts.version.clone(),
            resources,
            type_url: ty.type_url(),
            nonce,
            ..Default::default()
        })
    }

    /// Responses for a new snapshot: every subscribed type whose version differs from what this
    /// stream was last sent, in push order (CDS → ECDS → LDS → RDS).
    pub fn changed(&mut self, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        let stale: Vec<ResourceType> = ResourceType::PUSH_ORDER
            .into_iter()
            .filter(|ty| {
                self.types.get(ty).is_some_and(|st| {
                    st.subscribed
                        && st.sent_version.as_deref() != Some(snapshot.get(*ty).version.as_str())
                })
            })
            .collect();
        stale
            .into_iter()
            .filter_map(|ty| self.response(ty, snapshot))
            .collect()
    }
}

/// What Envoy appends to a rejection message it cut at 4 KiB (the gRPC status message limit).
const ENVOY_TRUNCATED: &str = "...(truncated)";

/// The useful part of an Envoy NACK message.
///
/// Envoy 1.40 prefixes proto validation errors with a `goo.gle/debug...` marker and a text dump
/// of the rejected resource, so the reason is at the end, after the dump's last line. Envoy cuts
/// every message at 4 KiB, so for a resource whose dump is longer (the MCP listener with its
/// access log format is) the reason never arrives: then this says so and where to find it (the
/// Envoy's own log has the whole message). Other messages are kept whole. The result is capped
/// at 2 KiB.
pub fn nack_reason(message: &str) -> String {
    let message = message.trim();
    // Seen markers: `goo.gle/debugstr` and `goo.gle/debugproto` (protobuf's debug-format tag).
    if message.contains("goo.gle/debug") && message.ends_with(ENVOY_TRUNCATED) {
        let resource = message
            .lines()
            .find_map(|l| l.trim().strip_prefix("name: "))
            .map(|n| format!(" of {n}"))
            .unwrap_or_default();
        return format!(
            "Envoy refused the resource{resource} but cut its message at 4 KiB, inside the dump of the resource and before the reason; the whole reason is in that Envoy's log (\"gRPC config for ... rejected\")"
        );
    }
    let reason = if message.contains("goo.gle/debug") {
        message
            .rsplit('\n')
            .map(|line| line.trim_start_matches(['}', ':', ' ', '\t']).trim())
            .find(|line| !line.is_empty())
            .unwrap_or(message)
    } else {
        message
    };
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((i, _)) => format!("{}…", &reason[..i]),
        None => reason.to_string(),
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
