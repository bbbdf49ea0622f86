//! The filter's behaviour through its public state machine: every request form the filter
//! must forward or refuse, what it answers, and exactly which stats it records.

#![allow(clippy::type_complexity)] // table-driven cases are tuples

use std::rc::Rc;

use serde_json::{Value, json};
use toolmesh_filter::auth::TokenFacts;
use toolmesh_filter::decide::{Reply, RequestHead, Route, SessionHeader};
use toolmesh_filter::flow::{
    CalloutAction, CalloutResponse, Flow, RequestAction, ResponseBodyMode,
};
use toolmesh_filter::policy::CompiledPolicy;
use toolmesh_filter::stats::MetricKind;

const POLICY: &str = r#"{
  "schema_version": 3,
  "catalog_version": "c1",
  "limits": {"max_body_bytes": 2048, "list_page_size": 2, "allowed_hosts": ["mcp.example.com"]},
  "sessions": {"keys": [{"id": "k1", "secret": "dG9vbG1lc2gtdGVzdC1zZXNzaW9uLWtleS0zMi1ieXRlcyEhIQ"}]},
  "virtual_servers": [
    {"name": "demo", "members": [
      {"mcp_server": "everything", "cluster": "up_everything", "path": "/mcp",
       "authority": "127.0.0.1:3001", "capabilities": {"tools": {}, "logging": {}},
       "tools": [
         {"name": "echo", "upstream_name": "echo"},
         {"name": "add", "upstream_name": "add_numbers"},
         {"name": "ns.tool", "upstream_name": "ns.tool"}
       ],
       "prompts": [{"name": "greet", "upstream_name": "simple_prompt"}],
       "resources": [{"uri": "test://static-text"}],
       "resource_templates": [{"uri_template": "test://template/{id}/data"}]},
      {"mcp_server": "weather", "cluster": "up_weather", "path": "/v1/mcp",
       "authority": "weather.internal:8443",
       "tools": [{"name": "forecast", "upstream_name": "get_forecast",
                  "definition": {"name": "get_forecast", "description": "Forecast",
                                 "inputSchema": {"type": "object"}}}]}
    ]},
    {"name": "single", "callers": ["tok-a"], "members": [
      {"mcp_server": "everything", "cluster": "up_everything", "path": "/mcp",
       "authority": "127.0.0.1:3001",
       "tools": [{"name": "echo", "upstream_name": "echo"}]}
    ]},
    {"name": "empty", "members": []}
  ]
}"#;

fn policy() -> Rc<CompiledPolicy> {
    Rc::new(CompiledPolicy::from_json(POLICY.as_bytes()).expect("policy"))
}

fn post(path: &str) -> RequestHead<'_> {
    RequestHead {
        method: "POST",
        path,
        content_type: Some("application/json"),
        content_encoding: None,
        content_length: None,
        mcp_method: None,
        mcp_name: None,
        authority: Some("127.0.0.1:8080"),
        origin: None,
        session_id: None,
        protocol_version: None,
        end_of_stream: false,
        invalid_utf8: None,
    }
}

/// A stat update with its name resolved (what the shell sends to Envoy).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    name: String,
    kind: MetricKind,
    value: u64,
}

/// The flow's pending stat updates, named.
fn take(flow: &mut Flow) -> Vec<Named> {
    let policy = Rc::clone(flow.policy());
    flow.take_stats()
        .into_iter()
        .map(|op| Named {
            name: policy.stat_name(op.key).expect("a stat of the policy"),
            kind: op.kind(),
            value: op.value,
        })
        .collect()
}

/// Run a POST through headers and body; the action and the stats.
fn run(head: &RequestHead<'_>, body: &str) -> (RequestAction, Vec<Named>, Flow) {
    let mut flow = Flow::new(policy());
    let action = match flow.on_request_headers(head, 1_000_000) {
        RequestAction::ReadBody => flow.on_request_body(body.as_bytes(), 1_000_001),
        other => other,
    };
    let stats = take(&mut flow);
    (action, stats, flow)
}

fn counters(stats: &[Named]) -> Vec<String> {
    stats
        .iter()
        .filter(|s| s.kind == MetricKind::Counter)
        .map(|s| s.name.clone())
        .collect()
}

fn call(id: &str, name: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{{"a":1}}}}}}"#
    )
}

fn route(action: &RequestAction) -> &Route {
    match action {
        RequestAction::Forward(r) => r,
        other => panic!("expected forward, got {other:?}"),
    }
}

fn denial(action: &RequestAction) -> (u16, Value) {
    match action {
        RequestAction::Deny(r) => (
            r.status,
            serde_json::from_slice(&r.body).expect("json body"),
        ),
        other => panic!("expected deny, got {other:?}"),
    }
}

#[test]
fn allowed_calls_are_routed_to_the_owning_member() {
    // (path, body, mcp-name header, cluster, :path, rewritten body, mcp-name rewrite)
    let cases: Vec<(
        &str,
        String,
        Option<&str>,
        &str,
        &str,
        Option<String>,
        Option<&str>,
    )> = vec![
        (
            "/servers/demo/mcp",
            call("1", "echo"),
            None,
            "up_everything",
            "/mcp",
            None,
            None,
        ),
        (
            "/servers/demo/mcp",
            call("1", "add"),
            None,
            "up_everything",
            "/mcp",
            Some(call("1", "add_numbers")),
            None,
        ),
        (
            "/servers/demo/mcp",
            call("1", "add"),
            Some("add"),
            "up_everything",
            "/mcp",
            Some(call("1", "add_numbers")),
            Some("add_numbers"),
        ),
        (
            "/servers/demo/mcp?x=1&y=2",
            call("\"a\"", "forecast"),
            Some("=?base64?Zm9yZWNhc3Q=?="),
            "up_weather",
            "/v1/mcp?x=1&y=2",
            Some(call("\"a\"", "get_forecast")),
            Some("get_forecast"),
        ),
        // JSON escapes are decoded before matching; the rename replaces the escaped token.
        (
            "/servers/demo/mcp",
            call("1", "\\u0061dd"),
            None,
            "up_everything",
            "/mcp",
            Some(call("1", "add_numbers")),
            None,
        ),
        (
            "/servers/demo/mcp",
            call("1", "ns.tool"),
            Some("ns.tool"),
            "up_everything",
            "/mcp",
            None,
            None,
        ),
    ];
    for (path, body, mcp_name, cluster, new_path, new_body, new_mcp_name) in cases {
        let mut head = post(path);
        head.mcp_name = mcp_name;
        let (action, _, _) = run(&head, &body);
        let r = route(&action);
        assert_eq!(&*r.cluster, cluster, "{body}");
        assert_eq!(&*r.path, new_path, "{body}");
        assert_eq!(
            r.body
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            new_body,
            "{body}"
        );
        assert_eq!(r.mcp_name.as_deref(), new_mcp_name, "{body}");
    }
}

/// Any local answer with a JSON body: (status, body).
fn answer(action: &RequestAction) -> (u16, Value) {
    match action {
        RequestAction::Deny(r) => (
            r.status,
            serde_json::from_slice(&r.body).expect("json body"),
        ),
        other => panic!("expected a local answer, got {other:?}"),
    }
}

/// `head` as a protocol 2026-07-28 request for `method` (the version and `Mcp-Method` headers).
fn modern<'a>(head: RequestHead<'a>, method: &'a str) -> RequestHead<'a> {
    RequestHead {
        protocol_version: Some("2026-07-28"),
        mcp_method: Some(method),
        ..head
    }
}

/// A protocol 2026-07-28 request body: `params` with the `_meta` envelope added.
fn stateless(method: &str, mut params: Value) -> String {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
    });
    json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).to_string()
}

fn result(action: &RequestAction) -> (u16, Value) {
    match action {
        RequestAction::Deny(r) if r.status == 200 => (
            r.status,
            serde_json::from_slice(&r.body).expect("json body"),
        ),
        other => panic!("expected a local 200 answer, got {other:?}"),
    }
}

#[test]
fn the_filter_answers_pings_lists_and_the_2026_probe_itself() {
    let (action, stats, _) = run(
        &post("/servers/demo/mcp"),
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(
        result(&action).1,
        json!({"jsonrpc":"2.0","id":1,"result":{}})
    );
    assert_eq!(
        counters(&stats),
        vec!["toolmesh.vs.demo.rq.ping".to_string()]
    );

    // Lists: the policy's items under their exposed names, pages of `list_page_size` (2).
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page < 10, "the list never ended");
        let body = match &cursor {
            None => json!({"jsonrpc":"2.0","id":"L","method":"tools/list"}),
            Some(c) => {
                json!({"jsonrpc":"2.0","id":"L","method":"tools/list","params":{"cursor":c}})
            }
        };
        let (action, stats, _) = run(&post("/servers/demo/mcp"), &body.to_string());
        assert_eq!(
            counters(&stats),
            vec!["toolmesh.vs.demo.rq.tools_list".to_string()]
        );
        let (_, v) = result(&action);
        assert_eq!(v["id"], "L");
        let tools = v["result"]["tools"].as_array().expect("tools").clone();
        assert!(tools.len() <= 2, "{v}");
        for t in &tools {
            names.push(t["name"].as_str().expect("name").to_string());
            if t["name"] == "forecast" {
                // The catalog definition, renamed as exposed.
                assert_eq!(t["description"], "Forecast");
            }
        }
        match v["result"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(names, ["echo", "add", "ns.tool", "forecast"]);

    let (action, _, _) = run(
        &post("/servers/demo/mcp"),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"garbage"}}"#,
    );
    assert_eq!(result(&action).1["error"]["code"], -32602);

    // The protocol 2026-07-28 probe is answered even when the members speak only the
    // handshake (the filter serves their calls in sessions of its own).
    let (action, _, _) = run(
        &modern(post("/servers/demo/mcp"), "server/discover"),
        &stateless("server/discover", json!({})),
    );
    let (status, v) = answer(&action);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["supportedVersions"][0], "2026-07-28", "{v}");
    // server/discover without the 2026-07-28 header: -32022 (HTTP 400) naming the versions.
    let (action, stats, _) = run(
        &post("/servers/demo/mcp"),
        r#"{"jsonrpc":"2.0","id":3,"method":"server/discover","params":{}}"#,
    );
    let (status, v) = answer(&action);
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], -32022, "{v}");
    assert_eq!(v["error"]["data"]["requested"], "2026-07-28", "{v}");
    assert!(
        v["error"]["data"]["supported"]
            .as_array()
            .expect("supported")
            .contains(&json!("2025-11-25"))
    );
    assert_eq!(
        counters(&stats),
        vec!["toolmesh.vs.demo.rq.server_discover".to_string()]
    );

    // Notifications on a virtual server of several members: accepted, not forwarded; and
    // `notifications/initialized` everywhere (the filter sent each member its own).
    for (path, body) in [
        (
            "/servers/demo/mcp",
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
        ),
        (
            "/servers/demo/mcp",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ),
        (
            "/servers/single/mcp",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ),
    ] {
        let (action, _, _) = run(&post(path), body);
        assert!(
            matches!(action, RequestAction::Deny(Reply { status: 202, ref body, .. }) if body.is_empty()),
            "{path} {body}"
        );
    }
}

#[test]
fn what_a_member_must_see_is_routed_to_it() {
    let cases = [
        // logging/setLevel: the first member that declares logging.
        (
            "/servers/demo/mcp",
            r#"{"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{"level":"debug"}}"#,
            "toolmesh.vs.demo.rq.logging_setLevel",
        ),
        // A client's answer to a server request: the primary.
        (
            "/servers/demo/mcp",
            r#"{"jsonrpc":"2.0","id":9,"result":{"action":"accept"}}"#,
            "toolmesh.vs.demo.rq.response",
        ),
        (
            "/servers/demo/mcp",
            r#"{"jsonrpc":"2.0","id":1,"method":"made/up","params":{"name":"zzz"}}"#,
            "toolmesh.vs.demo.rq.other",
        ),
        // With a single member, notifications are that member's business.
        (
            "/servers/single/mcp",
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
            "toolmesh.vs.single.rq.notifications_cancelled",
        ),
    ];
    for (path, body, stat) in cases {
        let (action, stats, _) = run(&post(path), body);
        let r = route(&action);
        assert_eq!(
            (&*r.cluster, &*r.path, r.body.is_none()),
            ("up_everything", "/mcp", true),
            "{body}"
        );
        assert_eq!(r.session, SessionHeader::Keep, "{body}");
        assert_eq!(counters(&stats), vec![stat.to_string()], "{body}");
    }
}

fn initialize_body() -> &'static str {
    r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#
}

/// Initialize on `demo` as caller `jti`: `everything` answers with session `up-1` (and then
/// 202 to `notifications/initialized`), `weather` as given. The reply.
fn initialize(jti: &str, weather: Option<CalloutResponse<'_>>) -> Reply {
    let mut flow = Flow::new(policy());
    flow.check_token(
        "demo",
        &TokenFacts {
            jti: Some(jti.to_string()),
            ..TokenFacts::default()
        },
        0,
    );
    assert_eq!(
        flow.on_request_headers(&post("/servers/demo/mcp"), 5_000),
        RequestAction::ReadBody
    );
    let RequestAction::Callouts(calls) = flow.on_request_body(initialize_body().as_bytes(), 5_000)
    else {
        panic!("initialize must open the member sessions first");
    };
    assert_eq!(calls.len(), 2);
    let everything = calls
        .iter()
        .find(|c| &*c.cluster == "up_everything")
        .expect("call");
    assert!(
        everything
            .headers
            .contains(&(":authority", "127.0.0.1:3001".to_string()))
    );
    assert!(everything.headers.contains(&(":path", "/mcp".to_string())));
    let sent: Value =
        serde_json::from_slice(everything.body.as_deref().expect("body")).expect("json");
    assert_eq!(sent["method"], "initialize");
    assert_eq!(sent["params"]["protocolVersion"], "2025-06-18");
    let weather_key = calls
        .iter()
        .find(|c| &*c.cluster == "up_weather")
        .expect("call")
        .key;

    let up = br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"e","version":"1"}}}"#;
    let CalloutAction::Dispatch(next) = flow.on_callout_response(
        everything.key,
        Some(CalloutResponse {
            status: 200,
            session_id: Some("up-1"),
            content_type: Some("application/json"),
            body: up,
        }),
        0,
    ) else {
        panic!("a stateful member gets notifications/initialized");
    };
    assert_eq!(next.len(), 1);
    assert!(
        next[0]
            .headers
            .contains(&("mcp-session-id", "up-1".to_string()))
    );
    assert_eq!(
        flow.on_callout_response(weather_key, weather, 0),
        CalloutAction::Wait
    );
    let CalloutAction::Reply(reply) = flow.on_callout_response(
        next[0].key,
        Some(CalloutResponse {
            status: 202,
            session_id: None,
            content_type: None,
            body: b"",
        }),
        0,
    ) else {
        panic!("all members done: the reply");
    };
    reply
}

fn stateless_answer() -> Option<CalloutResponse<'static>> {
    Some(CalloutResponse {
        status: 200,
        session_id: None,
        content_type: Some("text/event-stream"),
        body: b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},\"serverInfo\":{\"name\":\"w\",\"version\":\"1\"}}}\n\n",
    })
}

fn session_of(reply: &Reply) -> String {
    reply
        .headers
        .iter()
        .find(|(n, _)| *n == "mcp-session-id")
        .map(|(_, v)| v.clone())
        .expect("a session id")
}

/// A POST to `demo` as caller `jti` with session `sid`, its headers taken: waiting for the body.
fn session_flow(jti: &str, sid: &str) -> Flow {
    let mut flow = Flow::new(policy());
    flow.check_token(
        "demo",
        &TokenFacts {
            jti: Some(jti.to_string()),
            ..TokenFacts::default()
        },
        0,
    );
    let head = RequestHead {
        session_id: Some(sid),
        ..post("/servers/demo/mcp")
    };
    assert_eq!(flow.on_request_headers(&head, 0), RequestAction::ReadBody);
    flow
}

/// A `tools/call` of `tool` on `demo` as caller `jti` with session `sid`.
fn call_in_session(jti: &str, sid: &str, tool: &str) -> (RequestAction, Vec<Named>) {
    let mut flow = session_flow(jti, sid);
    let action = flow.on_request_body(call("4", tool).as_bytes(), 0);
    assert_eq!(
        flow.strips_response_session(),
        matches!(action, RequestAction::Forward(_))
    );
    (action, take(&mut flow))
}

#[test]
fn initialize_opens_member_sessions_and_seals_them_into_one_session_id() {
    let reply = initialize("tok-a", stateless_answer());
    let v: Value = serde_json::from_slice(&reply.body).expect("json");
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(v["result"]["serverInfo"]["name"], "demo");
    assert!(v["result"]["capabilities"]["tools"].is_object(), "{v}");
    assert!(v["result"]["capabilities"]["logging"].is_object(), "{v}");
    let sid = session_of(&reply);

    // A call to the stateful member carries its own session id and version.
    let (action, _) = call_in_session("tok-a", &sid, "echo");
    let r = route(&action);
    assert_eq!(r.session, SessionHeader::Set("up-1".into()));
    assert_eq!(r.protocol_version.as_deref(), Some("2025-06-18"));
    // The stateless member gets none.
    let (action, _) = call_in_session("tok-a", &sid, "forecast");
    assert_eq!(route(&action).session, SessionHeader::Remove);

    // Tampered, or presented by another caller: 404 so the client initializes again.
    let mut tampered = sid.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    for (jti, sid) in [("tok-a", tampered.as_str()), ("tok-b", sid.as_str())] {
        let (action, stats) = call_in_session(jti, sid, "echo");
        match action {
            RequestAction::Deny(r) => assert_eq!(r.status, 404),
            other => panic!("expected 404, got {other:?}"),
        }
        assert!(
            counters(&stats).contains(&"toolmesh.vs.demo.denied.session_invalid".to_string()),
            "{stats:?}"
        );
    }
}

#[test]
fn a_member_that_fails_to_initialize_is_left_out_and_its_tools_answer_an_error() {
    for weather in [
        None,
        Some(CalloutResponse {
            status: 500,
            session_id: None,
            content_type: Some("text/plain"),
            body: b"down",
        }),
    ] {
        let reply = initialize("tok-a", weather);
        assert_eq!(reply.status, 200);
        let sid = session_of(&reply);
        let (action, stats) = call_in_session("tok-a", &sid, "forecast");
        let (status, v) = denial(&action);
        assert_eq!(status, 200);
        assert_eq!(v["error"]["code"], -32603);
        assert!(
            v["error"]["message"]
                .as_str()
                .expect("msg")
                .contains("weather"),
            "{v}"
        );
        assert!(
            counters(&stats).contains(&"toolmesh.vs.demo.denied.member_unavailable".to_string())
        );
        // The other member keeps working.
        let (action, _) = call_in_session("tok-a", &sid, "echo");
        assert_eq!(route(&action).session, SessionHeader::Set("up-1".into()));
    }
}

#[test]
fn several_members_have_no_get_stream_and_delete_ends_every_member_session() {
    let mut flow = Flow::new(policy());
    let get = RequestHead {
        method: "GET",
        end_of_stream: true,
        content_type: None,
        ..post("/servers/demo/mcp")
    };
    match flow.on_request_headers(&get, 0) {
        RequestAction::Deny(r) => {
            assert_eq!(r.status, 405);
            assert!(r.headers.contains(&("allow", "POST, DELETE".to_string())));
        }
        other => panic!("expected 405, got {other:?}"),
    }

    let sid = session_of(&initialize("", stateless_answer()));
    let mut flow = Flow::new(policy());
    let delete = RequestHead {
        method: "DELETE",
        session_id: Some(&sid),
        ..get
    };
    let RequestAction::Callouts(calls) = flow.on_request_headers(&delete, 0) else {
        panic!("DELETE closes the member sessions");
    };
    assert_eq!(calls.len(), 1, "only the stateful member has a session");
    assert!(
        calls[0]
            .headers
            .contains(&(":method", "DELETE".to_string()))
    );
    assert!(
        calls[0]
            .headers
            .contains(&("mcp-session-id", "up-1".to_string()))
    );
    match flow.on_callout_response(calls[0].key, None, 0) {
        CalloutAction::Reply(r) => assert_eq!(r.status, 200),
        other => panic!("expected the reply, got {other:?}"),
    }
}

#[test]
fn foreign_hosts_and_origins_are_refused() {
    for (authority, origin, ok) in [
        ("127.0.0.1:8080", None, true),
        ("localhost", Some("http://localhost:3000"), true),
        ("[::1]:8080", None, true),
        ("mcp.example.com", Some("https://mcp.example.com"), true),
        ("evil.example.com", None, false),
        ("127.0.0.1:8080", Some("http://evil.example.com"), false),
        ("127.0.0.1:8080", Some("null"), false),
    ] {
        let head = RequestHead {
            authority: Some(authority),
            origin,
            ..post("/servers/demo/mcp")
        };
        let mut flow = Flow::new(policy());
        let action = flow.on_request_headers(&head, 0);
        if ok {
            assert_eq!(action, RequestAction::ReadBody, "{authority} {origin:?}");
        } else {
            assert_eq!(denial(&action).0, 403, "{authority} {origin:?}");
            assert_eq!(
                counters(&take(&mut flow)),
                vec!["toolmesh.vs.demo.denied.bad_host".to_string()]
            );
        }
    }
}

#[test]
fn resources_prompts_and_completions() {
    let cases = [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"test://static-text"}}"#,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"test://template/42/data"}}"#,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"test://static-text"}}"#,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/unsubscribe","params":{"uri":"test://static-text"}}"#,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"greet","arguments":{}}}"#,
            Some(
                r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"simple_prompt","arguments":{}}}"#,
            ),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet"},"argument":{"name":"x","value":"y"}}}"#,
            Some(
                r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"simple_prompt"},"argument":{"name":"x","value":"y"}}}"#,
            ),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"test://template/{id}/data"},"argument":{"name":"id","value":"4"}}}"#,
            None,
        ),
    ];
    for (body, rewritten) in cases {
        let (action, _, _) = run(&post("/servers/demo/mcp"), body);
        let r = route(&action);
        assert_eq!(&*r.cluster, "up_everything", "{body}");
        assert_eq!(
            r.body
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .as_deref(),
            rewritten,
            "{body}"
        );
    }
}

#[test]
fn denials_with_an_id_are_http_200_jsonrpc_errors() {
    // (body, mcp-method, mcp-name, code, message fragment, counters)
    let cases: Vec<(String, Option<&str>, Option<&str>, i64, &str, Vec<&str>)> = vec![
        (
            call("7", "secret"),
            None,
            None,
            -32602,
            "Tool 'secret' is not allowed on virtual server 'demo'",
            vec!["toolmesh.vs.demo.rq.tools_call", "toolmesh.vs.demo.denied.not_allowed"],
        ),
        (
            call("7", "add_numbers"),
            None,
            None,
            -32602,
            "Tool 'add_numbers' is not allowed",
            vec!["toolmesh.vs.demo.rq.tools_call", "toolmesh.vs.demo.denied.not_allowed"],
        ),
        (
            call("7", "ADD"),
            None,
            None,
            -32602,
            "Tool 'ADD' is not allowed on virtual server 'demo' (names must match exactly)",
            vec![
                "toolmesh.vs.demo.rq.tools_call",
                "toolmesh.vs.demo.denied.lookalike",
                "toolmesh.tool.demo.everything.add.denied",
            ],
        ),
        (
            call("7", "\u{0435}cho"),
            None,
            None,
            -32602,
            "is not allowed",
            vec![
                "toolmesh.vs.demo.rq.tools_call",
                "toolmesh.vs.demo.denied.lookalike",
                "toolmesh.tool.demo.everything.echo.denied",
            ],
        ),
        (
            call("7", " echo"),
            None,
            None,
            -32602,
            "is not allowed",
            vec![
                "toolmesh.vs.demo.rq.tools_call",
                "toolmesh.vs.demo.denied.lookalike",
                "toolmesh.tool.demo.everything.echo.denied",
            ],
        ),
        (
            call("7", "echo"),
            Some("tools/list"),
            None,
            -32020,
            "Mcp-Method header does not match",
            vec!["toolmesh.vs.demo.rq.tools_call", "toolmesh.vs.demo.denied.header_mismatch"],
        ),
        (
            call("7", "echo"),
            Some("tools/call"),
            Some("add"),
            -32020,
            "Mcp-Name header does not match",
            vec![
                "toolmesh.vs.demo.rq.tools_call",
                "toolmesh.vs.demo.denied.header_mismatch",
                "toolmesh.tool.demo.everything.echo.denied",
            ],
        ),
        (
            call("7", "echo"),
            None,
            Some("=?base64?bad?="),
            -32020,
            "Mcp-Name header does not match",
            vec![
                "toolmesh.vs.demo.rq.tools_call",
                "toolmesh.vs.demo.denied.header_mismatch",
                "toolmesh.tool.demo.everything.echo.denied",
            ],
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#.into(),
            None,
            None,
            -32002,
            "Resource 'file:///etc/passwd' is not allowed on virtual server 'demo'",
            vec!["toolmesh.vs.demo.rq.resources_read", "toolmesh.vs.demo.denied.not_allowed"],
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"test://template/../secret/data"}}"#.into(),
            None,
            None,
            -32002,
            "is not allowed",
            vec!["toolmesh.vs.demo.rq.resources_read", "toolmesh.vs.demo.denied.not_allowed"],
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"test://static-text"}}"#.into(),
            None,
            Some("test://other"),
            -32020,
            "Mcp-Name header does not match the request body's 'uri'",
            vec!["toolmesh.vs.demo.rq.resources_read", "toolmesh.vs.demo.denied.header_mismatch"],
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"prompts/get","params":{"name":"simple_prompt"}}"#.into(),
            None,
            None,
            -32602,
            "Prompt 'simple_prompt' is not allowed on virtual server 'demo'",
            vec!["toolmesh.vs.demo.rq.prompts_get", "toolmesh.vs.demo.denied.not_allowed"],
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"other"}}}"#.into(),
            None,
            None,
            -32602,
            "Prompt 'other' is not allowed",
            vec!["toolmesh.vs.demo.rq.completion_complete", "toolmesh.vs.demo.denied.not_allowed"],
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"test://nope/{x}"}}}"#.into(),
            None,
            None,
            -32002,
            "Resource 'test://nope/{x}' is not allowed",
            vec!["toolmesh.vs.demo.rq.completion_complete", "toolmesh.vs.demo.denied.not_allowed"],
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"completion/complete","params":{"ref":{"type":"ref/tool","name":"echo"}}}"#.into(),
            None,
            None,
            -32600,
            "params.ref.type",
            vec!["toolmesh.vs.demo.rq.completion_complete", "toolmesh.vs.demo.denied.invalid_request"],
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"arguments":{"name":"echo"}}}"#.into(),
            None,
            None,
            -32600,
            "params.name is required",
            vec!["toolmesh.vs.demo.rq.tools_call", "toolmesh.vs.demo.denied.invalid_request"],
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":["echo"]}}"#.into(),
            None,
            None,
            -32600,
            "params.name must be a string",
            vec!["toolmesh.vs.demo.rq.tools_call", "toolmesh.vs.demo.denied.invalid_request"],
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","name":"secret"}}"#.into(),
            None,
            None,
            -32600,
            "repeats the key 'name'",
            vec!["toolmesh.vs.demo.denied.duplicate_key"],
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"secret","n\u0061me":"echo"}}"#.into(),
            None,
            None,
            -32600,
            "repeats the key 'name'",
            vec!["toolmesh.vs.demo.denied.duplicate_key"],
        ),
        (
            r#"{"jsonrpc":"1.0","id":7,"method":"tools/call","params":{"name":"echo"}}"#.into(),
            None,
            None,
            -32600,
            "jsonrpc must be",
            vec!["toolmesh.vs.demo.denied.invalid_request"],
        ),
    ];
    for (body, mcp_method, mcp_name, code, fragment, want_counters) in cases {
        let mut head = post("/servers/demo/mcp");
        head.mcp_method = mcp_method;
        head.mcp_name = mcp_name;
        let (action, stats, _) = run(&head, &body);
        let (status, reply) = denial(&action);
        assert_eq!(status, 200, "{body}");
        assert_eq!(reply["jsonrpc"], json!("2.0"), "{body}");
        assert_eq!(reply["id"], json!(7), "{body}");
        assert_eq!(reply["error"]["code"], json!(code), "{body}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(fragment), "{body}: {message}");
        assert_eq!(counters(&stats), want_counters, "{body}");
    }
}

#[test]
fn denials_without_an_id_are_4xx_with_a_null_id() {
    let cases: Vec<(&str, &str, u16, i64, &str, &str)> = vec![
        (
            "/servers/demo/mcp",
            "{not json",
            400,
            -32700,
            "not valid JSON",
            "toolmesh.vs.demo.denied.malformed_json",
        ),
        (
            "/servers/demo/mcp",
            "",
            400,
            -32700,
            "not valid JSON",
            "toolmesh.vs.demo.denied.malformed_json",
        ),
        (
            "/servers/demo/mcp",
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}]"#,
            400,
            -32600,
            "batches are not supported by this gateway",
            "toolmesh.vs.demo.denied.batch",
        ),
        (
            "/servers/demo/mcp",
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"secret"}}"#,
            403,
            -32602,
            "Tool 'secret' is not allowed",
            "toolmesh.vs.demo.denied.not_allowed",
        ),
        (
            "/servers/demo/mcp",
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            400,
            -32600,
            "repeats the key 'id'",
            "toolmesh.vs.demo.denied.duplicate_key",
        ),
        (
            "/servers/demo/mcp",
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            400,
            -32600,
            "id must be",
            "toolmesh.vs.demo.denied.invalid_request",
        ),
        (
            "/servers/demo/mcp",
            "12",
            400,
            -32600,
            "not a JSON object",
            "toolmesh.vs.demo.denied.invalid_request",
        ),
    ];
    for (path, body, status, code, fragment, stat) in cases {
        let (action, stats, _) = run(&post(path), body);
        let (got_status, reply) = denial(&action);
        assert_eq!(got_status, status, "{body}");
        assert_eq!(reply["id"], Value::Null, "{body}");
        assert_eq!(reply["error"]["code"], json!(code), "{body}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(fragment), "{body}: {message}");
        assert!(
            counters(&stats).contains(&stat.to_string()),
            "{body}: {stats:?}"
        );
    }
}

#[test]
fn header_checks_refuse_before_reading_the_body() {
    let huge = "99999999";
    let cases: Vec<(RequestHead<'static>, u16, &str)> = vec![
        (
            RequestHead {
                content_type: Some("text/plain"),
                ..post("/servers/demo/mcp")
            },
            415,
            "toolmesh.vs.demo.denied.content_type",
        ),
        (
            RequestHead {
                content_type: None,
                ..post("/servers/demo/mcp")
            },
            415,
            "toolmesh.vs.demo.denied.content_type",
        ),
        (
            RequestHead {
                invalid_utf8: Some("mcp-name"),
                ..post("/servers/demo/mcp")
            },
            400,
            "toolmesh.vs.demo.denied.invalid_request",
        ),
        (
            RequestHead {
                invalid_utf8: Some("mcp-name"),
                ..post("/servers/nope/mcp")
            },
            404,
            "toolmesh.global.denied.unknown_virtual_server",
        ),
        (
            RequestHead {
                content_encoding: Some("gzip"),
                ..post("/servers/demo/mcp")
            },
            415,
            "toolmesh.vs.demo.denied.content_encoding",
        ),
        (
            RequestHead {
                content_encoding: Some("identity, br"),
                ..post("/servers/demo/mcp")
            },
            415,
            "toolmesh.vs.demo.denied.content_encoding",
        ),
        (
            RequestHead {
                content_length: Some(huge),
                ..post("/servers/demo/mcp")
            },
            413,
            "toolmesh.vs.demo.denied.body_too_large",
        ),
        (
            RequestHead {
                content_length: Some("-1"),
                ..post("/servers/demo/mcp")
            },
            413,
            "toolmesh.vs.demo.denied.body_too_large",
        ),
        (
            RequestHead {
                end_of_stream: true,
                ..post("/servers/demo/mcp")
            },
            400,
            "toolmesh.vs.demo.denied.malformed_json",
        ),
        (
            RequestHead {
                method: "PUT",
                ..post("/servers/demo/mcp")
            },
            405,
            "toolmesh.vs.demo.denied.http_method",
        ),
        (
            RequestHead {
                method: "GET",
                end_of_stream: false,
                ..post("/servers/demo/mcp")
            },
            400,
            "toolmesh.vs.demo.denied.http_method",
        ),
        (
            post("/servers/demo/mcp/../x"),
            404,
            "toolmesh.global.denied.bad_path",
        ),
        (
            post("/servers/de%6Do/mcp"),
            404,
            "toolmesh.global.denied.bad_path",
        ),
        (post("/"), 404, "toolmesh.global.denied.bad_path"),
        (
            RequestHead {
                method: "GET",
                end_of_stream: true,
                ..post("/servers/nope/mcp")
            },
            404,
            "toolmesh.global.denied.unknown_virtual_server",
        ),
    ];
    for (head, status, stat) in cases {
        let mut flow = Flow::new(policy());
        let action = flow.on_request_headers(&head, 0);
        let (got, reply) = denial(&action);
        assert_eq!(got, status, "{head:?}");
        assert_eq!(reply["jsonrpc"], json!("2.0"));
        assert_eq!(
            counters(&take(&mut flow)),
            vec![stat.to_string()],
            "{head:?}"
        );
    }
    // Content-Type parameters and case are accepted.
    let mut flow = Flow::new(policy());
    let head = RequestHead {
        content_type: Some("Application/JSON; charset=utf-8"),
        content_encoding: Some("identity"),
        ..post("/servers/demo/mcp")
    };
    assert_eq!(flow.on_request_headers(&head, 0), RequestAction::ReadBody);
}

#[test]
fn bodies_over_the_cap_are_refused_while_streaming_and_at_the_end() {
    let mut flow = Flow::new(policy());
    assert_eq!(
        flow.on_request_headers(&post("/servers/demo/mcp"), 0),
        RequestAction::ReadBody
    );
    assert_eq!(flow.on_request_body_progress(2048), None);
    let reply = flow.on_request_body_progress(2049).expect("refused");
    assert_eq!(reply.status, 413);
    assert_eq!(
        counters(&take(&mut flow)),
        vec!["toolmesh.vs.demo.denied.body_too_large".to_string()]
    );

    let big = call("1", &"x".repeat(3000));
    let (action, stats, _) = run(&post("/servers/demo/mcp"), &big);
    assert_eq!(denial(&action).0, 413);
    assert_eq!(
        counters(&stats),
        vec!["toolmesh.vs.demo.denied.body_too_large".to_string()]
    );
}

#[test]
fn unknown_virtual_servers_are_404_with_the_request_id() {
    let (action, stats, _) = run(&post("/servers/nope/mcp"), &call("5", "echo"));
    let (status, reply) = denial(&action);
    assert_eq!(status, 404);
    assert_eq!(reply["id"], json!(5));
    assert_eq!(
        reply["error"]["message"],
        json!("Virtual server 'nope' does not exist")
    );
    assert_eq!(
        counters(&stats),
        vec!["toolmesh.global.denied.unknown_virtual_server".to_string()]
    );

    let (action, _, _) = run(&post("/servers/nope/mcp"), "garbage");
    assert_eq!(denial(&action).1["id"], Value::Null);
}

#[test]
fn a_virtual_server_without_members_answers_locally_and_refuses_the_rest() {
    // What the filter answers itself works without members (an empty server).
    let (action, stats, _) = run(
        &post("/servers/empty/mcp"),
        r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
    );
    assert_eq!(result(&action).1["result"], json!({}));
    assert_eq!(
        counters(&stats),
        vec!["toolmesh.vs.empty.rq.ping".to_string()]
    );
    let (action, _, _) = run(
        &post("/servers/empty/mcp"),
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
    );
    assert_eq!(result(&action).1["result"]["tools"], json!([]));
    // Anything that needs an upstream is refused.
    let (action, stats, _) = run(
        &post("/servers/empty/mcp"),
        r#"{"jsonrpc":"2.0","id":3,"method":"made/up"}"#,
    );
    let (status, reply) = denial(&action);
    assert_eq!(
        (status, reply["error"]["code"].clone()),
        (200, json!(-32603))
    );
    assert_eq!(
        counters(&stats),
        vec![
            "toolmesh.vs.empty.rq.other".to_string(),
            "toolmesh.vs.empty.denied.no_member".to_string()
        ]
    );
    let mut flow = Flow::new(policy());
    let head = RequestHead {
        method: "DELETE",
        end_of_stream: true,
        ..post("/servers/empty/mcp")
    };
    assert_eq!(denial(&flow.on_request_headers(&head, 0)).0, 503);
}

#[test]
fn bodiless_get_and_delete_pass_through_a_single_member() {
    for (method, stat) in [
        ("GET", "toolmesh.vs.single.rq.http_get"),
        ("DELETE", "toolmesh.vs.single.rq.http_delete"),
    ] {
        let mut flow = Flow::new(policy());
        let head = RequestHead {
            method,
            end_of_stream: true,
            content_type: None,
            ..post("/servers/single/mcp?s=1")
        };
        let action = flow.on_request_headers(&head, 0);
        let r = route(&action);
        assert_eq!((&*r.cluster, &*r.path), ("up_everything", "/mcp?s=1"));
        assert_eq!(counters(&take(&mut flow)), vec![stat.to_string()]);
    }
}

/// Forward an allowed `tools/call` for `echo` with id 7 at t=1_000_000 ms.
fn forwarded_call() -> Flow {
    let mut flow = Flow::new(policy());
    assert_eq!(
        flow.on_request_headers(&post("/servers/demo/mcp"), 1_000_000),
        RequestAction::ReadBody
    );
    assert!(matches!(
        flow.on_request_body(call("7", "echo").as_bytes(), 1_000_000),
        RequestAction::Forward(_)
    ));
    let stats = take(&mut flow);
    assert_eq!(
        stats,
        vec![
            Named {
                name: "toolmesh.vs.demo.rq.tools_call".into(),
                kind: MetricKind::Counter,
                value: 1
            },
            Named {
                name: "toolmesh.tool.demo.everything.echo.calls".into(),
                kind: MetricKind::Counter,
                value: 1
            },
            Named {
                name: "toolmesh.tool.demo.everything.echo.last_call_ts".into(),
                kind: MetricKind::Gauge,
                value: 1000
            },
        ]
    );
    flow
}

fn latency(ms: u64) -> Named {
    Named {
        name: "toolmesh.tool.demo.everything.echo.latency_ms".into(),
        kind: MetricKind::Histogram,
        value: ms,
    }
}

fn errors() -> Named {
    Named {
        name: "toolmesh.tool.demo.everything.echo.errors".into(),
        kind: MetricKind::Counter,
        value: 1,
    }
}

#[test]
fn call_outcomes_are_observed_without_touching_the_stream() {
    let ok_json = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi"}]}}"#;
    let is_error = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}"#;
    let rpc_error = r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"boom"}}"#;
    let progress = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
    // (status, content type, body chunks, error?)
    let cases: Vec<(u16, &str, Vec<String>, bool)> = vec![
        (200, "application/json", vec![ok_json.into()], false),
        (
            200,
            "application/json",
            vec![is_error[..10].into(), is_error[10..].into()],
            true,
        ),
        (200, "application/json", vec![rpc_error.into()], true),
        (500, "application/json", vec![ok_json.into()], true),
        (
            503,
            "text/plain",
            vec!["upstream connect error".into()],
            true,
        ),
        (
            200,
            "text/event-stream",
            vec![
                progress.into(),
                format!("event: message\ndata: {ok_json}\n\n"),
            ],
            false,
        ),
        (
            200,
            "text/event-stream",
            vec![progress.into(), format!("data: {is_error}\n\n")],
            true,
        ),
        (
            200,
            "text/event-stream",
            vec![format!("data: {rpc_error}\n\n")],
            true,
        ),
    ];
    for (status, ct, chunks, want_error) in cases {
        let mut flow = forwarded_call();
        let action = flow.on_response_headers(status, Some(ct), false, 1_000_010);
        // `demo` has two members: its event streams pass the server-request tagger, which
        // leaves streams without server requests untouched.
        let expected = if ct == "text/event-stream" {
            ResponseBodyMode::Rewrite
        } else {
            ResponseBodyMode::Observe
        };
        assert_eq!(action.body, expected);
        let n = chunks.len();
        for (i, c) in chunks.iter().enumerate() {
            if expected == ResponseBodyMode::Rewrite {
                assert_eq!(flow.rewrite_response_body(c.as_bytes(), i + 1 == n), None);
            }
            flow.on_response_body(c.as_bytes(), i + 1 == n, 1_000_250);
        }
        flow.on_done(1_000_300);
        let mut want = Vec::new();
        if want_error {
            want.push(errors());
        }
        want.push(latency(250));
        assert_eq!(take(&mut flow), want, "{status} {ct} {chunks:?}");
    }
}

#[test]
fn a_response_that_never_completes_is_an_error() {
    // Reset before any response.
    let mut flow = forwarded_call();
    flow.on_done(1_000_042);
    assert_eq!(take(&mut flow), vec![errors(), latency(42)]);
    // Reset in the middle of an SSE stream.
    let mut flow = forwarded_call();
    flow.on_response_headers(200, Some("text/event-stream"), false, 1_000_001);
    flow.on_response_body(
        b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n",
        false,
        1_000_002,
    );
    flow.on_done(1_000_500);
    assert_eq!(take(&mut flow), vec![errors(), latency(500)]);
    // A response without a body ends at the headers.
    let mut flow = forwarded_call();
    flow.on_response_headers(202, None, true, 1_000_003);
    flow.on_done(1_000_900);
    assert_eq!(take(&mut flow), vec![latency(3)]);
}

#[test]
fn a_response_already_seen_decides_even_if_the_stream_then_breaks() {
    // The client got its successful response and left before the stream ended: a success.
    let ok = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#;
    let mut flow = forwarded_call();
    flow.on_response_headers(200, Some("text/event-stream"), false, 1_000_001);
    flow.on_response_body(format!("data: {ok}\n\n").as_bytes(), false, 1_000_020);
    flow.on_done(1_000_030);
    assert_eq!(take(&mut flow), vec![latency(30)]);
    // Same with an error response: still an error.
    let err = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}"#;
    let mut flow = forwarded_call();
    flow.on_response_headers(200, Some("text/event-stream"), false, 1_000_001);
    flow.on_response_body(format!("data: {err}\n\n").as_bytes(), false, 1_000_020);
    flow.on_done(1_000_030);
    assert_eq!(take(&mut flow), vec![errors(), latency(30)]);
}

#[test]
fn an_empty_body_is_a_parse_error() {
    let mut head = post("/servers/demo/mcp");
    head.end_of_stream = true;
    let mut flow = Flow::new(policy());
    let action = flow.on_request_headers(&head, 1_000_000);
    let (status, body) = denial(&action);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], -32700, "{body}");
    assert_eq!(body["id"], Value::Null);
}

#[test]
fn denied_requests_ignore_the_local_reply_on_the_way_out() {
    let (_, _, mut flow) = run(&post("/servers/demo/mcp"), &call("1", "secret"));
    let h = flow.on_response_headers(200, Some("application/json"), false, 0);
    assert_eq!(h.body, ResponseBodyMode::Pass);
    flow.on_done(5);
    assert!(take(&mut flow).is_empty());
}

#[test]
fn request_trailers_are_refused_while_the_body_is_read() {
    let mut flow = Flow::new(policy());
    assert_eq!(
        flow.on_request_headers(&post("/servers/demo/mcp"), 0),
        RequestAction::ReadBody
    );
    let reply = flow.on_request_trailers().expect("refused");
    assert_eq!(reply.status, 400);
    assert_eq!(
        counters(&take(&mut flow)),
        vec!["toolmesh.vs.demo.denied.invalid_request".to_string()]
    );
    // After a decision, trailers are none of the flow's business.
    let (_, _, mut flow) = run(&post("/servers/demo/mcp"), &call("1", "echo"));
    assert_eq!(flow.on_request_trailers(), None);
}

#[test]
fn the_access_log_value_names_the_virtual_server_tool_and_outcome() {
    let mut flow = forwarded_call();
    // A call's outcome is known only when its response ends.
    assert_eq!(flow.take_log_property(), None);
    flow.on_response_headers(500, Some("application/json"), false, 0);
    flow.on_response_body(b"{}", true, 1_000_100);
    assert_eq!(
        flow.take_log_property().as_deref(),
        Some("demo tools_call everything/echo error")
    );
    let mut flow = forwarded_call();
    flow.on_response_headers(200, Some("application/json"), false, 0);
    flow.on_response_body(
        br#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#,
        true,
        1,
    );
    assert_eq!(
        flow.take_log_property().as_deref(),
        Some("demo tools_call everything/echo ok")
    );

    let (_, _, mut flow) = run(&post("/servers/demo/mcp"), &call("1", "secret"));
    assert_eq!(
        flow.take_log_property().as_deref(),
        Some("demo tools_call - denied.not_allowed")
    );
    let (_, _, mut flow) = run(
        &post("/servers/demo/mcp"),
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(
        flow.take_log_property().as_deref(),
        Some("demo ping - local")
    );
    let (_, _, mut flow) = run(&post("/nope"), "{}");
    assert_eq!(
        flow.take_log_property().as_deref(),
        Some("- - - denied.bad_path")
    );
}

#[test]
fn listed_callers_get_their_own_stats_and_others_do_not() {
    for (jti, want) in [
        (
            "tok-a",
            vec![
                "toolmesh.vs.single.rq.tools_call",
                "toolmesh.caller.single.tok-a.calls",
                "toolmesh.tool.single.everything.echo.calls",
            ],
        ),
        (
            "tok-b",
            vec![
                "toolmesh.vs.single.rq.tools_call",
                "toolmesh.tool.single.everything.echo.calls",
            ],
        ),
    ] {
        let mut flow = Flow::new(policy());
        flow.check_token(
            "single",
            &TokenFacts {
                jti: Some(jti.to_string()),
                ..TokenFacts::default()
            },
            0,
        );
        assert_eq!(
            flow.on_request_headers(&post("/servers/single/mcp"), 0),
            RequestAction::ReadBody
        );
        route(&flow.on_request_body(call("1", "echo").as_bytes(), 0));
        assert_eq!(counters(&take(&mut flow)), want, "{jti}");
        flow.on_response_headers(502, Some("text/plain"), false, 0);
        flow.on_response_body(b"bad gateway", true, 10);
        let all = take(&mut flow);
        let after = counters(&all);
        assert_eq!(
            after.contains(&"toolmesh.caller.single.tok-a.errors".to_string()),
            jti == "tok-a",
            "{after:?}"
        );
        assert_eq!(
            all.iter()
                .any(|s| s.name == "toolmesh.caller.single.tok-a.latency_ms"
                    && s.kind == MetricKind::Histogram
                    && s.value == 10),
            jti == "tok-a",
            "{all:?}"
        );
        // A refusal counts as the caller's denial.
        let mut flow = Flow::new(policy());
        flow.check_token(
            "single",
            &TokenFacts {
                jti: Some(jti.to_string()),
                ..TokenFacts::default()
            },
            0,
        );
        flow.on_request_headers(&post("/servers/single/mcp"), 0);
        denial(&flow.on_request_body(call("2", "nope").as_bytes(), 0));
        assert_eq!(
            counters(&take(&mut flow)).contains(&"toolmesh.caller.single.tok-a.denied".to_string()),
            jti == "tok-a"
        );
    }
}

/// [`POLICY`] with every member of every virtual server speaking protocol 2026-07-28.
fn modern_policy() -> Rc<CompiledPolicy> {
    let json = POLICY.replace(
        r#""authority": "#,
        r#""modern_versions": ["2026-07-28"], "authority": "#,
    );
    Rc::new(CompiledPolicy::from_json(json.as_bytes()).expect("policy"))
}

fn run_modern(head: &RequestHead<'_>, body: &str) -> (RequestAction, Vec<Named>) {
    let mut flow = Flow::new(modern_policy());
    let action = match flow.on_request_headers(head, 1_000_000) {
        RequestAction::ReadBody => flow.on_request_body(body.as_bytes(), 1_000_001),
        other => other,
    };
    let stats = take(&mut flow);
    (action, stats)
}

#[test]
fn the_stateless_protocol_is_answered_and_routed_without_sessions() {
    let vs = "/servers/demo/mcp";
    // server/discover: the virtual server's versions and capabilities, from the policy.
    let (action, stats) = run_modern(
        &modern(post(vs), "server/discover"),
        &stateless("server/discover", json!({})),
    );
    let (status, v) = answer(&action);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["id"], 7);
    assert_eq!(v["result"]["supportedVersions"][0], "2026-07-28", "{v}");
    assert_eq!(v["result"]["resultType"], "complete");
    assert!(v["result"]["capabilities"]["tools"].is_object(), "{v}");
    assert_eq!(
        v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "demo"
    );
    assert_eq!(
        counters(&stats),
        vec!["toolmesh.vs.demo.rq.server_discover".to_string()]
    );

    // Lists: exposed names across both members, with what 2026-07-28 requires of results.
    let (action, _) = run_modern(
        &modern(post(vs), "tools/list"),
        &stateless("tools/list", json!({})),
    );
    let (status, v) = answer(&action);
    assert_eq!(status, 200);
    assert_eq!(v["result"]["tools"][0]["name"], "echo");
    assert_eq!(v["result"]["resultType"], "complete");
    assert_eq!(v["result"]["ttlMs"], 0);
    assert_eq!(v["result"]["cacheScope"], "private");
    assert!(v["result"]["nextCursor"].is_string(), "{v}");

    // A call goes to the owning member, renamed, with the session header removed (one sent
    // anyway is not checked: there are no sessions) and the client's version kept.
    let head = RequestHead {
        mcp_name: Some("forecast"),
        session_id: Some("not-a-sealed-session"),
        ..modern(post(vs), "tools/call")
    };
    let (action, stats) = run_modern(
        &head,
        &stateless("tools/call", json!({"name": "forecast", "arguments": {}})),
    );
    let r = route(&action);
    assert_eq!(&*r.cluster, "up_weather");
    assert_eq!(r.mcp_name.as_deref(), Some("get_forecast"));
    assert_eq!(r.session, SessionHeader::Remove);
    assert_eq!(r.protocol_version, None);
    let body: Value = serde_json::from_slice(r.body.as_deref().expect("renamed body")).unwrap();
    assert_eq!(body["params"]["name"], "get_forecast");
    assert_eq!(
        body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"], "2026-07-28",
        "the envelope reaches the member"
    );
    assert!(
        counters(&stats).contains(&"toolmesh.vs.demo.rq.tools_call".to_string()),
        "{stats:?}"
    );

    // Refusals carry the spec's HTTP statuses.
    let cases: Vec<(RequestHead<'_>, String, u16, i64)> = vec![
        // A tool outside the allowlist: -32602, 400.
        (
            RequestHead {
                mcp_name: Some("rm_rf"),
                ..modern(post(vs), "tools/call")
            },
            stateless("tools/call", json!({"name": "rm_rf"})),
            400,
            -32602,
        ),
        // A resource outside the allowlist: -32602 (SEP-2164), 400.
        (
            RequestHead {
                mcp_name: Some("test://nope"),
                ..modern(post(vs), "resources/read")
            },
            stateless("resources/read", json!({"uri": "test://nope"})),
            400,
            -32602,
        ),
        // No _meta envelope.
        (
            modern(post(vs), "tools/list"),
            json!({"jsonrpc":"2.0","id":7,"method":"tools/list","params":{}}).to_string(),
            400,
            -32602,
        ),
        // Mcp-Method disagrees with the body.
        (
            modern(post(vs), "prompts/list"),
            stateless("tools/list", json!({})),
            400,
            -32020,
        ),
        // Mcp-Name missing on a call.
        (
            modern(post(vs), "tools/call"),
            stateless("tools/call", json!({"name": "echo"})),
            400,
            -32020,
        ),
        // Mcp-Name names another tool than the body.
        (
            RequestHead {
                mcp_name: Some("add"),
                ..modern(post(vs), "tools/call")
            },
            stateless("tools/call", json!({"name": "echo"})),
            400,
            -32020,
        ),
        // Removed methods: 404 -32601, never forwarded.
        (
            modern(post(vs), "initialize"),
            stateless("initialize", json!({})),
            404,
            -32601,
        ),
        (
            modern(post(vs), "ping"),
            stateless("ping", json!({})),
            404,
            -32601,
        ),
        (
            modern(post(vs), "logging/setLevel"),
            stateless("logging/setLevel", json!({"level": "debug"})),
            404,
            -32601,
        ),
        // A client response: there are no server requests to answer.
        (
            modern(post(vs), "tools/list"),
            json!({"jsonrpc":"2.0","id":7,"result":{}}).to_string(),
            400,
            -32600,
        ),
        // Malformed JSON.
        (modern(post(vs), "tools/list"), "{".to_string(), 400, -32700),
        // The header says 2026-07-28, the envelope another version.
        (
            modern(post(vs), "tools/list"),
            stateless("tools/list", json!({})).replace("2026-07-28", "2025-11-25"),
            400,
            -32020,
        ),
    ];
    for (head, body, status, code) in cases {
        let (action, _) = run_modern(&head, &body);
        let (got, v) = answer(&action);
        assert_eq!(
            (got, v["error"]["code"].as_i64()),
            (status, Some(code)),
            "{body}: {v}"
        );
    }

    let (action, _) = run_modern(
        &RequestHead {
            mcp_name: Some("test://nope"),
            ..modern(post(vs), "resources/read")
        },
        &stateless("resources/read", json!({"uri": "test://nope"})),
    );
    assert_eq!(
        answer(&action).1["error"]["data"],
        json!({"uri": "test://nope"})
    );

    // Notifications are accepted and dropped; GET and DELETE have no place here.
    let (action, _) = run_modern(
        &modern(post(vs), "notifications/cancelled"),
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
    );
    assert!(
        matches!(&action, RequestAction::Deny(r) if r.status == 202 && r.body.is_empty()),
        "{action:?}"
    );
    for method in ["GET", "DELETE"] {
        let head = RequestHead {
            method,
            end_of_stream: true,
            ..modern(post(vs), "")
        };
        let (action, _) = run_modern(&head, "");
        match action {
            RequestAction::Deny(r) => {
                assert_eq!(r.status, 405);
                assert_eq!(r.headers, vec![("allow", "POST".to_string())]);
            }
            other => panic!("{method}: {other:?}"),
        }
    }
}

fn callout_response<'a>(
    status: u16,
    session_id: Option<&'a str>,
    content_type: Option<&'a str>,
    body: &'a [u8],
) -> Option<CalloutResponse<'a>> {
    Some(CalloutResponse {
        status,
        session_id,
        content_type,
        body,
    })
}

fn dispatched(action: CalloutAction) -> toolmesh_filter::flow::Callout {
    match action {
        CalloutAction::Dispatch(mut calls) if calls.len() == 1 => calls.remove(0),
        other => panic!("expected one call, got {other:?}"),
    }
}

#[test]
fn a_stateless_call_to_a_handshake_only_member_runs_in_a_session_of_its_own() {
    // `policy()`: the members list no stateless versions.
    let mut flow = Flow::new(policy());
    let head = RequestHead {
        mcp_name: Some("add"),
        ..modern(post("/servers/demo/mcp"), "tools/call")
    };
    assert_eq!(
        flow.on_request_headers(&head, 1_000_000),
        RequestAction::ReadBody
    );
    let body = stateless(
        "tools/call",
        json!({"name": "add", "arguments": {"a": 2, "b": 3}}),
    );
    let RequestAction::Callouts(calls) = flow.on_request_body(body.as_bytes(), 1_000_001) else {
        panic!("the member's session is opened first");
    };
    assert_eq!(calls.len(), 1);
    assert_eq!(&*calls[0].cluster, "up_everything");
    let init: Value = serde_json::from_slice(calls[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(init["method"], "initialize");

    let up = br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"e","version":"1"}}}"#;
    let notify = dispatched(flow.on_callout_response(
        0,
        callout_response(200, Some("up-9"), Some("application/json"), up),
        1_000_010,
    ));
    assert!(notify.headers.contains(&("mcp-session-id", "up-9".into())));
    // The session is open: the request itself goes on, through the router, in that session.
    let CalloutAction::Forward(r) =
        flow.on_callout_response(0, callout_response(202, None, None, b""), 1_000_020)
    else {
        panic!("the request is forwarded in the new session");
    };
    assert_eq!(&*r.cluster, "up_everything");
    assert_eq!(r.session, SessionHeader::Set("up-9".into()));
    assert_eq!(
        r.protocol_version.as_deref(),
        Some("2025-06-18"),
        "the member's own version"
    );
    let sent: Value = serde_json::from_slice(r.body.as_deref().expect("rewritten")).unwrap();
    assert_eq!(
        sent["params"]["name"], "add_numbers",
        "renamed for the member"
    );
    assert_eq!(sent["id"], 7);
    assert!(
        sent["params"].get("_meta").is_none(),
        "no stateless envelope in a handshake session: {sent}"
    );
    assert!(flow.strips_response_session());

    // The response streams back (observed as usual); at its end, the session is ended.
    assert!(flow.wants_response());
    let headers = flow.on_response_headers(200, Some("text/event-stream"), false, 1_000_030);
    assert_eq!(
        headers.body,
        ResponseBodyMode::Rewrite,
        "the result gets the resultType 2026-07-28 clients require"
    );
    let answer_sse = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"5\"}],\"isError\":true}}\n\n";
    let out = flow
        .rewrite_response_body(answer_sse, true)
        .expect("the result event is tagged");
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("notifications/progress"),
        "progress kept: {out}"
    );
    assert!(out.contains(r#""resultType":"complete""#), "{out}");
    flow.on_response_body(answer_sse, true, 1_000_250);
    let stats = counters(&take(&mut flow));
    assert!(
        stats.contains(&"toolmesh.tool.demo.everything.add.errors".to_string()),
        "the member's isError counts: {stats:?}"
    );
    let delete = flow.take_session_to_end().expect("the session's DELETE");
    assert_eq!(delete.headers[0], (":method", "DELETE".into()));
    assert!(delete.headers.contains(&("mcp-session-id", "up-9".into())));
    assert!(flow.take_session_to_end().is_none(), "once");
    assert_eq!(
        flow.on_callout_response(0, None, 1_000_300),
        CalloutAction::Wait,
        "the DELETE's answer changes nothing"
    );

    // A member that cannot open a session: -32603 naming it, counted.
    let mut flow = Flow::new(policy());
    flow.on_request_headers(&head, 0);
    let RequestAction::Callouts(_) = flow.on_request_body(body.as_bytes(), 0) else {
        panic!("initialize");
    };
    let CalloutAction::Reply(reply) = flow.on_callout_response(0, None, 5) else {
        panic!("the error reply");
    };
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        (reply.status, v["error"]["code"].as_i64()),
        (200, Some(-32603))
    );
    assert_eq!(v["id"], 7);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'everything'"),
        "{v}"
    );
    let stats = counters(&take(&mut flow));
    assert!(
        stats.contains(&"toolmesh.vs.demo.denied.member_init_failed".to_string()),
        "{stats:?}"
    );
    assert_eq!(flow.take_notes().len(), 1);
}

#[test]
fn a_server_request_on_a_federated_virtual_server_is_answered_at_its_member() {
    // `forecast` is member 1's (`weather`); its call's event stream carries a sampling request.
    let reply = initialize("tok-a", stateless_answer());
    let sid = session_of(&reply);
    let mut flow = session_flow("tok-a", &sid);
    let action = flow.on_request_body(call("4", "forecast").as_bytes(), 0);
    assert_eq!(&*route(&action).cluster, "up_weather");
    let headers = flow.on_response_headers(200, Some("text/event-stream"), false, 0);
    assert_eq!(headers.body, ResponseBodyMode::Rewrite);
    let sampling = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"sampling/createMessage\",\"params\":{}}\n\n";
    let out = flow
        .rewrite_response_body(sampling.as_bytes(), false)
        .expect("the request's id is tagged");
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains(r#""id":"tm.1.0""#), "{out}");
    let result = "data: {\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{\"content\":[]}}\n\n";
    assert_eq!(flow.rewrite_response_body(result.as_bytes(), true), None);

    // The client's answer goes to member 1, in member 1's session, with the original id.
    let mut flow = session_flow("tok-a", &sid);
    let action = flow.on_request_body(
        br#"{"jsonrpc":"2.0","id":"tm.1.0","result":{"role":"assistant","content":{"type":"text","text":"hi"}}}"#,
        0,
    );
    let r = route(&action);
    assert_eq!(&*r.cluster, "up_weather");
    let body: Value = serde_json::from_slice(r.body.as_deref().expect("id restored")).unwrap();
    assert_eq!(body["id"], 0);
    assert_eq!(body["result"]["content"]["text"], "hi");
    // An answer without a tag still goes to the primary.
    let mut flow = session_flow("tok-a", &sid);
    let action = flow.on_request_body(br#"{"jsonrpc":"2.0","id":0,"result":{}}"#, 0);
    assert_eq!(&*route(&action).cluster, "up_everything");
    assert_eq!(route(&action).body, None);
}

#[test]
fn a_notification_on_a_federated_virtual_server_reaches_every_member_session() {
    // `everything` opened a session (up-1), `weather` is stateless.
    let weather = Some(CalloutResponse {
        status: 200,
        session_id: None,
        content_type: Some("application/json"),
        body: br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"w","version":"1"}}}"#,
    });
    let reply = initialize("tok-a", weather);
    let sid = session_of(&reply);
    let mut flow = session_flow("tok-a", &sid);
    let cancel =
        br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":4}}"#;
    let RequestAction::Callouts(calls) = flow.on_request_body(cancel, 0) else {
        panic!("the notification goes to the members");
    };
    assert_eq!(calls.len(), 2, "both members: {calls:?}");
    for c in &calls {
        assert_eq!(c.body.as_deref(), Some(&cancel[..]));
        assert_eq!(c.headers[0], (":method", "POST".into()));
    }
    let everything = calls
        .iter()
        .find(|c| &*c.cluster == "up_everything")
        .unwrap();
    assert!(
        everything
            .headers
            .contains(&("mcp-session-id", "up-1".into())),
        "in its own session: {:?}",
        everything.headers
    );
    let weather = calls.iter().find(|c| &*c.cluster == "up_weather").unwrap();
    assert!(
        !weather.headers.iter().any(|(n, _)| *n == "mcp-session-id"),
        "a stateless member has none"
    );
    assert_eq!(
        flow.on_callout_response(everything.key, callout_response(202, None, None, b""), 0),
        CalloutAction::Wait
    );
    match flow.on_callout_response(weather.key, None, 0) {
        CalloutAction::Reply(r) => {
            assert_eq!(r.status, 202);
            assert!(r.body.is_empty());
        }
        other => panic!("the 202, whatever the members said: {other:?}"),
    }
}
