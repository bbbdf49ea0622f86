//! Unit tests for the ADS stream state machine, driven with the requests Envoy 1.40 was observed
//! to send (see `shared/research/envoy-wasm-xds.md` §3.3).

use super::*;
use crate::resources::{NamedResource, ResourceType as T};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;

fn snapshot(tag: &str) -> Snapshot {
    let r = |name: &str| NamedResource {
        name: name.into(),
        resource: Any {
            type_url: "t".into(),
            value: format!("{name}-{tag}").into_bytes(),
        },
    };
    Snapshot::from_resources(BTreeMap::from([
        (T::Cluster, vec![r("c1"), r("c2")]),
        (T::ExtensionConfig, vec![r("toolmesh")]),
        (T::Listener, vec![r("toolmesh_mcp")]),
        (T::Route, vec![r("toolmesh_routes"), r("other_routes")]),
    ]))
}

fn req(ty: T, version: &str, nonce: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: ty.type_url(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn nack(ty: T, kept: &str, nonce: &str, names: &[&str], message: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(Status {
            code: 13,
            message: message.into(),
            details: vec![],
        }),
        ..req(ty, kept, nonce, names)
    }
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// Subscribe `ty`, get the response, return its (version, nonce).
fn subscribe(t: &mut StreamTracker, ty: T, names: &[&str], s: &Snapshot) -> (String, String) {
    let o = t.on_request(&req(ty, "", "", names), now());
    assert_eq!(o.event, Event::Subscribe);
    assert!(o.respond);
    let r = t.response(ty, s).unwrap();
    (r.version_info, r.nonce)
}

#[test]
fn first_request_records_the_node_and_is_answered() {
    let mut t = StreamTracker::new();
    let s = snapshot("a");
    let mut first = req(T::Cluster, "", "", &[]);
    first.node = Some(Node {
        id: "gw-1".into(),
        cluster: "toolmesh".into(),
        ..Default::default()
    });
    let o = t.on_request(&first, now());
    assert_eq!(
        (o.ty, o.event, o.respond),
        (Some(T::Cluster), Event::Subscribe, true)
    );
    assert_eq!(t.node().unwrap().id, "gw-1");
    // Later requests carry no node (set_node_on_first_message_only); the node stays.
    t.on_request(&req(T::Listener, "", "", &[]), now());
    assert_eq!(t.node().unwrap().cluster, "toolmesh");

    let r = t.response(T::Cluster, &s).unwrap();
    assert_eq!(r.type_url, T::Cluster.type_url());
    assert_eq!(r.version_info, s.get(T::Cluster).version);
    assert_eq!(r.resources.len(), 2, "wildcard CDS gets every cluster");
    assert!(!r.nonce.is_empty());
}

#[test]
fn named_subscriptions_get_only_their_resources() {
    let mut t = StreamTracker::new();
    let s = snapshot("a");
    t.on_request(&req(T::Route, "", "", &["toolmesh_routes"]), now());
    let r = t.response(T::Route, &s).unwrap();
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].value, b"toolmesh_routes-a");
    // An empty name list for a non-wildcard type subscribes to nothing: no answer.
    let mut t = StreamTracker::new();
    let o = t.on_request(&req(T::ExtensionConfig, "", "", &[]), now());
    assert!(!o.respond);
    assert!(t.response(T::ExtensionConfig, &s).is_none());
}

#[test]
fn ack_commits_the_version_and_is_not_answered() {
    let mut t = StreamTracker::new();
    let s = snapshot("a");
    let (v, n) = subscribe(&mut t, T::Cluster, &[], &s);
    assert!(
        t.acked_versions().is_empty(),
        "nothing is acked before the ACK"
    );
    let o = t.on_request(&req(T::Cluster, &v, &n, &[]), now());
    assert_eq!(o.event, Event::Ack { version: v.clone() });
    assert!(!o.respond, "answering an ACK would loop");
    assert_eq!(t.acked_versions()[&T::Cluster], v);
    // Nothing changed: nothing to push.
    assert!(t.changed(&s).is_empty());
}

#[test]
fn nack_keeps_the_last_good_version_and_records_the_reason() {
    let mut t = StreamTracker::new();
    let (good, bad) = (snapshot("good"), snapshot("bad"));
    let (v1, n1) = subscribe(&mut t, T::Listener, &[], &good);
    t.on_request(&req(T::Listener, &v1, &n1, &[]), now());

    let pushed = t.changed(&bad);
    assert_eq!(pushed.len(), 1);
    let (v2, n2) = (pushed[0].version_info.clone(), pushed[0].nonce.clone());
    assert_ne!(v1, v2);

    let msg = "goo.gle/debugstr\nname: \"toolmesh_mcp\"\naddress {\n  socket_address {\n    port_value: 70000\n  }\n}\n: Proto constraint validation failed (ListenerValidationError.Address: value must be less than or equal to 65535)";
    let o = t.on_request(&nack(T::Listener, &v1, &n2, &[], msg), now());
    let Event::Nack(n) = o.event else {
        panic!("not a NACK: {o:?}")
    };
    assert!(!o.respond, "re-sending the rejected config would loop");
    assert_eq!(n.version, v2, "the NACK names the rejected version");
    assert_eq!(n.type_url, T::Listener.type_url());
    assert!(
        n.message.starts_with("Proto constraint validation failed"),
        "{}",
        n.message
    );
    assert_eq!(n.at, now());
    assert_eq!(
        t.acked_versions()[&T::Listener],
        v1,
        "last good version stays"
    );
    assert_eq!(t.last_nack(), Some(&n));
    // Envoy repeats the NACK with the same nonce: same outcome, still no answer.
    let o = t.on_request(&nack(T::Listener, &v1, &n2, &[], msg), now());
    assert!(matches!(o.event, Event::Nack(_)) && !o.respond);
    // The same rejected snapshot is not pushed again; a fixed one is.
    assert!(t.changed(&bad).is_empty());
    let fixed = t.changed(&snapshot("fixed"));
    assert_eq!(fixed.len(), 1);
}

#[test]
fn stale_nonces_are_ignored() {
    let mut t = StreamTracker::new();
    let (a, b) = (snapshot("a"), snapshot("b"));
    let (va, na) = subscribe(&mut t, T::Cluster, &[], &a);
    // A new snapshot goes out before Envoy ACKed the first one.
    let pushed = t.changed(&b);
    let (vb, nb) = (pushed[0].version_info.clone(), pushed[0].nonce.clone());
    // The late ACK of the first response is stale: ignored, not committed.
    let o = t.on_request(&req(T::Cluster, &va, &na, &[]), now());
    assert_eq!((o.event, o.respond), (Event::Stale, false));
    assert!(t.acked_versions().is_empty());
    // A nonce never sent is stale too (e.g. from another server).
    let o = t.on_request(&req(T::Cluster, &va, "999", &[]), now());
    assert_eq!(o.event, Event::Stale);
    // A NACK with a stale nonce is not recorded.
    let o = t.on_request(&nack(T::Cluster, "", &na, &[], "old"), now());
    assert_eq!(o.event, Event::Stale);
    assert!(t.last_nack().is_none());
    // The current ACK counts.
    let o = t.on_request(&req(T::Cluster, &vb, &nb, &[]), now());
    assert_eq!(o.event, Event::Ack { version: vb });
}

#[test]
fn reconnect_with_a_version_and_empty_nonce_is_answered() {
    // A restarted control plane: Envoy's first request carries the version it holds.
    let s = snapshot("a");
    let mut t = StreamTracker::new();
    let v = s.get(T::Cluster).version.clone();
    let o = t.on_request(&req(T::Cluster, &v, "", &[]), now());
    assert_eq!((o.event, o.respond), (Event::Subscribe, true));
    assert!(t.response(T::Cluster, &s).is_some());
    // Also with an older version it does not have.
    let mut t = StreamTracker::new();
    let o = t.on_request(&req(T::Route, "deadbeef", "", &["toolmesh_routes"]), now());
    assert!(o.respond);
}

#[test]
fn an_ack_that_changes_the_subscription_is_answered() {
    let mut t = StreamTracker::new();
    let s = snapshot("a");
    let (v, n) = subscribe(&mut t, T::Route, &["toolmesh_routes"], &s);
    let o = t.on_request(
        &req(T::Route, &v, &n, &["toolmesh_routes", "other_routes"]),
        now(),
    );
    assert_eq!(o.event, Event::Ack { version: v });
    assert!(o.respond, "new names need their resources");
    assert_eq!(t.response(T::Route, &s).unwrap().resources.len(), 2);
}

#[test]
fn pushes_follow_cds_ecds_lds_rds_and_skip_unchanged_types() {
    let mut t = StreamTracker::new();
    let a = snapshot("a");
    // Envoy subscribes in its own order; nothing is published yet.
    for (ty, names) in [
        (T::Route, &["toolmesh_routes"][..]),
        (T::Listener, &[][..]),
        (T::ExtensionConfig, &["toolmesh"][..]),
        (T::Cluster, &[][..]),
    ] {
        t.on_request(&req(ty, "", "", names), now());
    }
    let order: Vec<_> = t.changed(&a).iter().map(|r| r.type_url.clone()).collect();
    let want: Vec<_> = T::PUSH_ORDER.iter().map(|t| t.type_url()).collect();
    assert_eq!(order, want);

    // Only the ECDS resource changes: only ECDS is pushed.
    let mut res = a.to_resources();
    res.get_mut(&T::ExtensionConfig).unwrap()[0].resource.value = b"new policy".to_vec();
    let b = Snapshot::from_resources(res);
    let pushed = t.changed(&b);
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].type_url, T::ExtensionConfig.type_url());
}

#[test]
fn unsupported_types_are_ignored() {
    let mut t = StreamTracker::new();
    let mut r = req(T::Cluster, "", "", &[]);
    r.type_url = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into();
    let o = t.on_request(&r, now());
    assert_eq!(
        (o.ty, o.event, o.respond),
        (None, Event::Unsupported, false)
    );
}

#[test]
fn nack_reason_extraction() {
    assert_eq!(
        nack_reason("  Unable to create Wasm plugin toolmesh "),
        "Unable to create Wasm plugin toolmesh"
    );
    assert_eq!(
        nack_reason(
            "goo.gle/debugstr\nname: \"x\"\n}\n: Proto constraint validation failed (bad)\n"
        ),
        "Proto constraint validation failed (bad)"
    );
    // As Envoy 1.40 sent it for a listener with port 70000 (abridged).
    let seen = "goo.gle/debugproto   \nname: \"toolmesh_mcp\"\naddress {\n  socket_address {\n    port_value: 70000\n  }\n}\nper_connection_buffer_limit_bytes {\n  value: 4194304\n}\n: Proto constraint validation failed (ListenerValidationError.Address: embedded message failed validation | caused by SocketAddressValidationError.PortValue: value must be less than or equal to 65535)";
    assert_eq!(
        nack_reason(seen),
        "Proto constraint validation failed (ListenerValidationError.Address: embedded message failed validation | caused by SocketAddressValidationError.PortValue: value must be less than or equal to 65535)"
    );
    // Cut by Envoy at 4 KiB inside the dump: the reason never arrived.
    let cut = "goo.gle/debugproto   \nname: \"toolmesh_mcp\"\naddress {\n  socket_address {\n    port_value: 70000\n  }\n}\nfilter_chains {\n  fields {\n    key: \"tool\"\n    value {\n      string_value: \"%FILTE...(truncated)";
    let r = nack_reason(cut);
    assert!(
        r.contains("\"toolmesh_mcp\"") && r.contains("4 KiB") && r.contains("Envoy's log"),
        "{r}"
    );
    assert!(!r.contains("FILTE"), "{r}");
    let long = "x".repeat(5000);
    assert_eq!(nack_reason(&long).chars().count(), MAX_REASON_CHARS + 1);
}
