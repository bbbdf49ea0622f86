//! Federation (issue 6): one virtual server made of two MCP servers, through the real control
//! plane, Envoy from the shipped bootstrap and the toolmesh filter, judged by what the official
//! clients (Python `mcp` in `legacy` and `auto` modes, the TypeScript SDK) and raw HTTP see, and
//! by what each upstream recorded.
//!
//! The two members differ the way real servers do: `plain` is a STATELESS test server answering
//! plain JSON (no session), `stateful` a STATEFUL one answering SSE streams (its own
//! `Mcp-Session-Id`). Both offer `echo`, unaliased, so the control plane exposes them as
//! `plain__echo` and `stateful__echo`; `add` is aliased `add_numbers`. The list page size is
//! [`PAGE_SIZE`], so the seven tools span three pages. A second virtual server, `solo`, exists
//! to prove a session cannot cross virtual servers. Every virtual server here needs a token.
//!
//! The contract (briefs/federation.md): the filter answers `initialize`, `ping`, the lists and
//! the `server/discover` probe itself; it opens each member's session on `initialize` and seals
//! them into one `Mcp-Session-Id` bound to the virtual server and the caller; it routes calls to
//! the owning member with that member's own session; a multi-member virtual server refuses GET
//! (405) and fans DELETE out; a foreign `Host`/`Origin` is refused (403); a member that never
//! answers costs a session at most `--member-timeout-ms`; `logging/setLevel` goes to the first
//! member that declares `logging`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use toolmesh_e2e::clients::{
    assert_progress_streamed, item_names as names, progress_times, py_err, py_ok, ts_ok,
};
use toolmesh_e2e::gateway::Gateway;
use toolmesh_e2e::test_servers::{RecordedRequest, RunningServer, TestServerConfig, spawn};
use toolmesh_e2e::{python_client, results, tools, ts_client};

/// The federated virtual server.
const FED: &str = "fed";
/// A single-member virtual server next to it.
const SOLO: &str = "solo";
/// A virtual server of `plain` and `legacy`, an MCP server that speaks only the `initialize`
/// handshake (not protocol 2026-07-28): the filter serves stateless calls to it in member
/// sessions of their own.
const MIXED: &str = "mixed";
/// `--list-page-size` of the control plane.
const PAGE_SIZE: u32 = 3;
/// A host name besides the loopback ones that may appear in `Host` (`--allowed-hosts`).
const ALLOWED_HOST: &str = "mcp.example.com";

/// The tools `fed` exposes: the colliding `echo`s qualified with their MCP server, the alias,
/// the rest under their own names.
const FED_TOOLS: [&str; 7] = [
    "plain__echo",
    "add_numbers",
    "long_list_01",
    "stateful__echo",
    "slow",
    "fail",
    "long_list_02",
];

/// The protocol versions the gateway speaks with the `initialize` handshake (newest first).
const VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// The stateless protocol version.
const STATELESS: &str = "2026-07-28";

/// The gateway and both members.
struct Fed {
    gw: Gateway,
    plain: RunningServer,
    stateful: RunningServer,
    /// Speaks only the handshake (a member of `mixed`).
    legacy: RunningServer,
    /// Speaks only the handshake, without sessions, answering JSON (a member of `mixed`).
    legacy_json: RunningServer,
    /// A token for `fed`, `solo` and `mixed`.
    token: String,
}

fn fed_body() -> Value {
    json!({
        "name": FED,
        "description": "two MCP servers as one",
        "tools": [
            {"mcp_server": "plain", "tool": "echo"},
            {"mcp_server": "plain", "tool": "add", "expose_as": "add_numbers"},
            {"mcp_server": "plain", "tool": "long_list_01"},
            {"mcp_server": "stateful", "tool": "echo"},
            {"mcp_server": "stateful", "tool": "slow"},
            {"mcp_server": "stateful", "tool": "fail"},
            {"mcp_server": "stateful", "tool": "long_list_02"},
        ],
        "prompts": [
            {"mcp_server": "plain", "prompt": "greet"},
            {"mcp_server": "stateful", "prompt": "summarize"},
        ],
        "resources": [
            {"mcp_server": "plain", "uri": "test://static/readme"},
            {"mcp_server": "stateful", "uri": "test://static/logo"},
        ],
        "resource_templates": [
            {"mcp_server": "stateful", "uri_template": "test://template/{id}/data"},
        ],
    })
}

impl Fed {
    /// Both members, the control plane (page size, allowed host), `fed` and `solo`, Envoy in
    /// sync, and a token. `None` (after a skip notice) when Envoy or the wasm is missing.
    async fn start(node: &str) -> Option<Fed> {
        let plain = spawn(TestServerConfig::stateless_json()).await.unwrap();
        let stateful = spawn(TestServerConfig::default()).await.unwrap();
        let legacy = spawn(TestServerConfig {
            handshake_only: true,
            ..TestServerConfig::default()
        })
        .await
        .unwrap();
        let legacy_json = spawn(TestServerConfig {
            handshake_only: true,
            ..TestServerConfig::stateless_json()
        })
        .await
        .unwrap();
        let gw = Gateway::builder(node)
            .configure(|c| {
                c.list_page_size = PAGE_SIZE;
                c.allowed_hosts = vec![ALLOWED_HOST.into()];
            })
            .mcp_server("plain", &plain.url())
            .mcp_server("stateful", &stateful.url())
            .mcp_server("legacy", &legacy.url())
            .mcp_server("legacy_json", &legacy_json.url())
            .virtual_server(fed_body())
            .virtual_server(json!({"name": SOLO, "tools": [
                {"mcp_server": "stateful", "tool": "echo"}]}))
            .virtual_server(json!({"name": MIXED, "tools": [
                {"mcp_server": "plain", "tool": "add"},
                {"mcp_server": "legacy", "tool": "echo"},
                {"mcp_server": "legacy", "tool": "slow"},
                {"mcp_server": "legacy_json", "tool": "long_list_03"}]}))
            .start()
            .await?;
        let token = gw.token("agent", &[FED, SOLO, MIXED]).await;
        // Both servers already saw discovery's requests: tests look at what came after.
        Some(Fed {
            gw,
            plain,
            stateful,
            legacy,
            legacy_json,
            token,
        })
    }

    fn url(&self) -> String {
        self.gw.url(FED)
    }

    fn py_auth(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }

    fn ts_auth(&self) -> String {
        format!("Authorization=Bearer {}", self.token)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `names`, sorted, and checked to have no duplicates.
fn name_set(items: &Value, key: &str) -> Vec<String> {
    let all = names(items, key);
    let set: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(set.len(), all.len(), "duplicates in {all:?}");
    set.into_iter().collect()
}

fn sorted(items: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

/// Number of pages `n` items take.
fn pages(n: usize) -> usize {
    n.div_ceil(PAGE_SIZE as usize)
}

/// The requests `server` received since it had received `since`.
fn since(server: &RunningServer, since: usize) -> Vec<RecordedRequest> {
    server.requests().into_iter().skip(since).collect()
}

fn rpc_method(r: &RecordedRequest) -> &str {
    r.jsonrpc_method.as_deref().unwrap_or_default()
}

/// The filter answers lists, `ping`, `server/discover` and the client's `initialize` itself:
/// none reached `server`; an `initialize` it saw is the filter's own (clientInfo `toolmesh`).
fn assert_nothing_local_forwarded(requests: &[RecordedRequest], what: &str) {
    for r in requests {
        let m = rpc_method(r);
        assert!(
            !m.ends_with("/list") && m != "ping" && m != "server/discover",
            "{what}: {m} reached an upstream: {r:#?}"
        );
        if m == "initialize" {
            let body = r.body.as_ref().unwrap();
            assert_eq!(
                body["params"]["clientInfo"]["name"], "toolmesh",
                "{what}: the client's own initialize reached an upstream: {r:#?}"
            );
        }
    }
}

/// One client session as the stateful member saw it (its requests since `before`): the
/// filter opened exactly one member session (`initialize` at `version`, then
/// `notifications/initialized` with the member's session id), and every later request of the
/// run carried that session id (and each POST `version`). Returns the member's session id.
fn assert_one_member_session(requests: &[RecordedRequest], version: &str, what: &str) -> String {
    let inits: Vec<_> = requests
        .iter()
        .filter(|r| rpc_method(r) == "initialize")
        .collect();
    assert_eq!(inits.len(), 1, "{what}: one member session: {requests:#?}");
    let init = inits[0].body.as_ref().unwrap();
    assert_eq!(init["params"]["protocolVersion"], version, "{what}: {init}");
    let after: Vec<_> = requests
        .iter()
        .filter(|r| rpc_method(r) != "initialize")
        .collect();
    assert_eq!(
        after.first().map(|r| rpc_method(r)),
        Some("notifications/initialized"),
        "{what}: the filter completes the handshake first: {requests:#?}"
    );
    let session = after[0]
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("{what}: notifications/initialized without a session"))
        .to_owned();
    for r in &after {
        assert_eq!(
            r.header("mcp-session-id"),
            Some(session.as_str()),
            "{what}: a request without the member's own session: {r:#?}"
        );
        if r.method == "POST" {
            assert_eq!(
                r.header("mcp-protocol-version"),
                Some(version),
                "{what}: a request without the member's version: {r:#?}"
            );
        }
    }
    session
}

/// The stateless member never gets a session id (it has none), only the filter's `initialize`.
fn assert_stateless_member(requests: &[RecordedRequest], what: &str) {
    for r in requests {
        assert_eq!(
            r.header("mcp-session-id"),
            None,
            "{what}: a session id reached the stateless member: {r:#?}"
        );
    }
}

/// The tools/call names `server` received in `requests`.
fn calls_in(requests: &[RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| rpc_method(r) == "tools/call")
        .map(|r| {
            r.body.as_ref().unwrap()["params"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// The `params` of `method` requests in `requests`.
fn params_of(requests: &[RecordedRequest], method: &str) -> Vec<Value> {
    requests
        .iter()
        .filter(|r| rpc_method(r) == method)
        .map(|r| r.body.as_ref().unwrap()["params"].clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The official clients
// ---------------------------------------------------------------------------------------------

/// The operations every client runs on `fed`, on one session.
fn fed_ops() -> Value {
    json!([
        {"op": "list_tools"},                                                           // 0
        {"op": "list_prompts"},                                                         // 1
        {"op": "list_resources"},                                                       // 2
        {"op": "list_resource_templates"},                                              // 3
        {"op": "call_tool", "name": "plain__echo", "arguments": {"message": "to plain"}},       // 4
        {"op": "call_tool", "name": "stateful__echo", "arguments": {"message": "to stateful"}}, // 5
        {"op": "call_tool", "name": "add_numbers", "arguments": {"a": 2, "b": 3}},      // 6
        {"op": "call_tool", "name": "fail"},                                            // 7
        {"op": "call_tool", "name": "echo", "arguments": {"message": "x"}},             // 8 denied
        {"op": "call_tool", "name": "add", "arguments": {"a": 1, "b": 1}},              // 9 denied
        {"op": "get_prompt", "name": "greet", "arguments": {"name": "Ada"}},            // 10
        {"op": "get_prompt", "name": "summarize", "arguments": {"text": "t"}},          // 11
        {"op": "read_resource", "uri": "test://static/readme"},                         // 12
        {"op": "read_resource", "uri": "test://static/logo"},                           // 13
        {"op": "read_resource", "uri": "test://template/7/data"},                       // 14
        {"op": "ping"},                                                                 // 15
    ])
}

/// What each member must have received from one run of [`fed_ops`] (the requests since the
/// run started), whichever client ran it.
fn assert_fed_run_upstreams(plain: &[RecordedRequest], stateful: &[RecordedRequest], what: &str) {
    assert_nothing_local_forwarded(plain, what);
    assert_nothing_local_forwarded(stateful, what);
    assert_stateless_member(plain, what);
    // Calls reached the member that owns them, under the upstream's own names; the denied
    // names reached nobody.
    assert_eq!(calls_in(plain), ["echo", "add"], "{what}: plain");
    assert_eq!(calls_in(stateful), ["echo", "fail"], "{what}: stateful");
    let echoed: Vec<_> = plain
        .iter()
        .chain(stateful)
        .filter(|r| rpc_method(r) == "tools/call")
        .map(|r| r.body.as_ref().unwrap()["params"]["arguments"]["message"].clone())
        .filter(|m| !m.is_null())
        .collect();
    assert!(
        echoed.contains(&json!("to plain")) && echoed.contains(&json!("to stateful")),
        "{what}: {echoed:?}"
    );
    assert_eq!(
        params_of(plain, "prompts/get")
            .iter()
            .map(|p| p["name"].clone())
            .collect::<Vec<_>>(),
        [json!("greet")],
        "{what}"
    );
    assert_eq!(
        params_of(stateful, "prompts/get")
            .iter()
            .map(|p| p["name"].clone())
            .collect::<Vec<_>>(),
        [json!("summarize")],
        "{what}"
    );
    let uris = |rs: &[RecordedRequest]| -> Vec<Value> {
        params_of(rs, "resources/read")
            .iter()
            .map(|p| p["uri"].clone())
            .collect()
    };
    assert_eq!(uris(plain), [json!("test://static/readme")], "{what}");
    assert_eq!(
        uris(stateful),
        [json!("test://static/logo"), json!("test://template/7/data")],
        "{what}"
    );
}

/// The Python client's view of one run of [`fed_ops`].
fn check_python_fed(doc: &Value, version: &str, what: &str) {
    assert_eq!(doc["connected"], true, "{what}: {doc:#}");
    assert!(doc["fatal_error"].is_null(), "{what}: {doc:#}");
    // `auto` probes server/discover; every member of `fed` speaks 2026-07-28, so the client
    // adopts it. `legacy` initializes.
    assert_eq!(doc["protocol_version"], version, "{what}: {doc:#}");
    assert_eq!(doc["server_info"]["name"], FED, "{what}: {doc:#}");
    assert!(doc["server_info"]["version"].is_string(), "{what}: {doc:#}");
    let caps = &doc["server_capabilities"];
    assert!(caps["tools"].is_object(), "{what}: {caps}");
    assert!(caps["prompts"].is_object(), "{what}: {caps}");
    // Both members expose resources and declare `resources.subscribe`.
    assert_eq!(caps["resources"]["subscribe"], true, "{what}: {caps}");
    assert!(
        caps.get("logging").is_none(),
        "{what}: no member logs: {caps}"
    );
    assert!(caps.get("completions").is_none(), "{what}: {caps}");

    let tools = py_ok(doc, 0, what);
    assert_eq!(
        name_set(&tools["tools"], "name"),
        sorted(&FED_TOOLS),
        "{what}"
    );
    assert_eq!(
        tools["pages"],
        pages(FED_TOOLS.len()),
        "{what}: pages of {PAGE_SIZE}"
    );
    let add = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "add_numbers")
        .unwrap();
    assert_eq!(
        add["inputSchema"]["required"],
        json!(["a", "b"]),
        "{what}: {add}"
    );
    let prompts = py_ok(doc, 1, what);
    assert_eq!(
        name_set(&prompts["prompts"], "name"),
        ["greet", "summarize"],
        "{what}"
    );
    let resources = py_ok(doc, 2, what);
    assert_eq!(
        name_set(&resources["resources"], "uri"),
        ["test://static/logo", "test://static/readme"],
        "{what}"
    );
    let templates = py_ok(doc, 3, what);
    assert_eq!(
        names(&templates["resourceTemplates"], "uriTemplate"),
        ["test://template/{id}/data"],
        "{what}"
    );

    assert_eq!(
        py_ok(doc, 4, what)["content"][0]["text"],
        "to plain",
        "{what}"
    );
    assert_eq!(
        py_ok(doc, 5, what)["content"][0]["text"],
        "to stateful",
        "{what}"
    );
    assert_eq!(
        py_ok(doc, 6, what)["structuredContent"],
        json!({"sum": 5}),
        "{what}"
    );
    assert_eq!(py_ok(doc, 7, what)["isError"], true, "{what}");
    for (i, name) in [(8, "echo"), (9, "add")] {
        let e = py_err(doc, i, what);
        assert_eq!(e["code"], -32602, "{what}: {name}: {e}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("'{name}'")) && message.contains(&format!("'{FED}'")),
            "{what}: {message:?}"
        );
    }
    assert_eq!(
        py_ok(doc, 10, what)["messages"][0]["content"]["text"],
        "Hello, Ada!",
        "{what}"
    );
    assert_eq!(
        py_ok(doc, 11, what)["messages"][0]["content"]["text"],
        "Summarize (brief): t",
        "{what}"
    );
    assert_eq!(
        py_ok(doc, 12, what)["contents"][0]["uri"],
        "test://static/readme"
    );
    assert_eq!(
        py_ok(doc, 13, what)["contents"][0]["uri"],
        "test://static/logo"
    );
    assert_eq!(
        py_ok(doc, 14, what)["contents"][0]["text"],
        r#"{"id":"7"}"#,
        "{what}"
    );
    if version == STATELESS {
        // 2026-07-28 removed ping: the spec's "method not found".
        assert_eq!(py_err(doc, 15, what)["code"], -32601, "{what}");
    } else {
        assert_eq!(py_ok(doc, 15, what), &json!({}), "{what}");
    }
}

/// A protocol 2026-07-28 run as a member saw it (its requests since the run started): no
/// session at all (no `initialize`, no session id), every POST at 2026-07-28 with `Mcp-Method`
/// and the client's `_meta` envelope. Returns how many requests it saw.
fn assert_stateless_run(requests: &[RecordedRequest], what: &str) -> usize {
    for r in requests {
        assert_eq!(r.method, "POST", "{what}: {r:#?}");
        assert_ne!(rpc_method(r), "initialize", "{what}: {r:#?}");
        assert_eq!(r.header("mcp-session-id"), None, "{what}: {r:#?}");
        assert_eq!(
            r.header("mcp-protocol-version"),
            Some(STATELESS),
            "{what}: {r:#?}"
        );
        assert_eq!(
            r.header("mcp-method"),
            Some(rpc_method(r)),
            "{what}: {r:#?}"
        );
        let meta = &r.body.as_ref().unwrap()["params"]["_meta"];
        assert_eq!(
            meta["io.modelcontextprotocol/protocolVersion"], STATELESS,
            "{what}: {r:#?}"
        );
    }
    requests.len()
}

/// The Python SDK in `legacy` and `auto` mode: one virtual server, lists complete across pages
/// under the exposed names, each call at its own member — with that member's session in
/// `legacy`, statelessly at 2026-07-28 in `auto` (every member speaks it). On `mixed`, whose
/// `legacy` member speaks only the handshake, `auto` falls back to `initialize`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_sees_one_server_and_calls_reach_their_member() {
    if tools::python().is_none() {
        return;
    }
    let Some(fed) = Fed::start("fed-py").await else {
        return;
    };
    for (mode, version) in [("legacy", "2025-11-25"), ("auto", STATELESS)] {
        let (p0, s0) = (fed.plain.requests().len(), fed.stateful.requests().len());
        let doc = python_client(
            &fed.url(),
            &fed_ops(),
            &["--mode", mode, "--header", &fed.py_auth()],
        )
        .await
        .unwrap();
        check_python_fed(&doc, version, mode);
        let (plain, stateful) = (since(&fed.plain, p0), since(&fed.stateful, s0));
        assert_fed_run_upstreams(&plain, &stateful, mode);
        let member_session = if version == STATELESS {
            assert_stateless_run(&plain, mode);
            format!(
                "none ({} stateless requests)",
                assert_stateless_run(&stateful, mode)
            )
        } else {
            assert_one_member_session(&stateful, version, mode)
        };
        eprintln!(
            "{mode}: stateful member session {member_session}; plain saw {:?}; stateful saw {:?}",
            plain
                .iter()
                .map(|r| (r.method.as_str(), rpc_method(r)))
                .collect::<Vec<_>>(),
            stateful
                .iter()
                .map(|r| (r.method.as_str(), rpc_method(r)))
                .collect::<Vec<_>>(),
        );
    }
}

/// `auto` on a virtual server with a member that speaks only the handshake: the client still
/// speaks 2026-07-28 to the virtual server; each of its calls to that member runs in a member
/// session the filter opens for it (`initialize`, `notifications/initialized`, the call,
/// DELETE), and the answer is tagged as 2026-07-28 requires. `legacy` works as everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_only_member_serves_stateless_clients_through_sessions_of_the_filter() {
    if tools::python().is_none() {
        return;
    }
    let Some(fed) = Fed::start("fed-mixed").await else {
        return;
    };
    let ops = json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": "echo", "arguments": {"message": "old"}},
        {"op": "call_tool", "name": "add", "arguments": {"a": 1, "b": 2}},
        {"op": "call_tool", "name": "echo", "arguments": {"message": "again"}},
        {"op": "call_tool", "name": "long_list_03"},
    ]);
    for (mode, version) in [("auto", STATELESS), ("legacy", "2025-11-25")] {
        let what = format!("mixed {mode}");
        let (l0, p0) = (fed.legacy.requests().len(), fed.plain.requests().len());
        let j0 = fed.legacy_json.requests().len();
        let doc = python_client(
            &fed.gw.url(MIXED),
            &ops,
            &["--mode", mode, "--header", &fed.py_auth()],
        )
        .await
        .unwrap();
        assert_eq!(doc["connected"], true, "{what}: {doc:#}");
        assert_eq!(doc["protocol_version"], version, "{what}: {doc:#}");
        assert_eq!(
            name_set(&py_ok(&doc, 0, &what)["tools"], "name"),
            ["add", "echo", "long_list_03", "slow"]
        );
        assert_eq!(py_ok(&doc, 1, &what)["content"][0]["text"], "old");
        assert_eq!(
            py_ok(&doc, 2, &what)["structuredContent"],
            json!({"sum": 3})
        );
        assert_eq!(py_ok(&doc, 3, &what)["content"][0]["text"], "again");
        // A handshake member without sessions, answering JSON: no session to open or end.
        assert_eq!(
            py_ok(&doc, 4, &what)["content"][0]["text"],
            "long_list_03 called"
        );
        let sessionless = since(&fed.legacy_json, j0);
        assert!(
            sessionless
                .iter()
                .all(|r| r.method == "POST" && r.header("mcp-session-id").is_none()),
            "{what}: {sessionless:#?}"
        );
        assert!(
            sessionless.iter().any(|r| rpc_method(r) == "tools/call"),
            "{what}: {sessionless:#?}"
        );
        let legacy = since(&fed.legacy, l0);
        assert_nothing_local_forwarded(&legacy, &what);
        if version == STATELESS {
            // Two calls, each in a session of its own, each session ended.
            let seen: Vec<(&str, &str)> = legacy
                .iter()
                .map(|r| (r.method.as_str(), rpc_method(r)))
                .collect();
            let one = [
                ("POST", "initialize"),
                ("POST", "notifications/initialized"),
                ("POST", "tools/call"),
                ("DELETE", ""),
            ];
            assert_eq!(seen, [one, one].concat(), "{what}: {legacy:#?}");
            let sessions: BTreeSet<_> = legacy
                .iter()
                .filter(|r| r.method == "DELETE")
                .map(|r| r.header("mcp-session-id").unwrap_or_default().to_owned())
                .collect();
            assert_eq!(sessions.len(), 2, "{what}: two sessions: {legacy:#?}");
            for r in legacy.iter().filter(|r| rpc_method(r) == "tools/call") {
                assert_eq!(
                    r.header("mcp-protocol-version"),
                    Some("2025-11-25"),
                    "{r:#?}"
                );
            }
            // `plain` speaks 2026-07-28: its call went through as is.
            assert_stateless_run(&since(&fed.plain, p0), &what);
        } else {
            assert_one_member_session(&legacy, version, &what);
        }
    }

    // Progress of a call to the handshake-only member streams to the stateless client as the
    // member sends it (the call runs in its own member session, through the router).
    let doc = python_client(
        &fed.gw.url(MIXED),
        &json!([{"op": "call_tool", "name": "slow",
                 "arguments": {"steps": 5, "interval_ms": 400}}]),
        &["--mode", "auto", "--header", &fed.py_auth()],
    )
    .await
    .unwrap();
    assert_eq!(doc["protocol_version"], STATELESS, "{doc:#}");
    let r = &results(&doc)[0];
    assert_eq!(
        py_ok(&doc, 0, "mixed slow")["content"][0]["text"],
        "done after 5 steps"
    );
    let times = progress_times(&r["progress"], "t_s");
    assert_progress_streamed(&times, r["elapsed_s"].as_f64(), "mixed slow");

    // A client that gives up in the middle of such a call: the member session is ended anyway.
    let l0 = fed.legacy.requests().len();
    let doc = python_client(
        &fed.gw.url(MIXED),
        &json!([{"op": "call_tool", "name": "slow",
                 "arguments": {"steps": 10, "interval_ms": 500}}]),
        &[
            "--mode",
            "auto",
            "--timeout",
            "1",
            "--header",
            &fed.py_auth(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(results(&doc)[0]["ok"], false, "the client gave up: {doc:#}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = since(&fed.legacy, l0);
        let opened: Vec<_> = seen
            .iter()
            .filter(|r| rpc_method(r) == "notifications/initialized")
            .filter_map(|r| r.header("mcp-session-id"))
            .collect();
        let ended: Vec<_> = seen
            .iter()
            .filter(|r| r.method == "DELETE")
            .filter_map(|r| r.header("mcp-session-id"))
            .collect();
        if opened.len() == 1 && ended == opened {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned call's member session was not ended: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The raw stateless call: the member's answer, streamed back as it sent it.
    let raw = Raw {
        client: reqwest::Client::new(),
        url: fed.gw.url(MIXED),
        token: &fed.token,
    };
    let reply = raw
        .send(
            reqwest::Method::POST,
            None,
            &[
                ("mcp-protocol-version", STATELESS),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
            Some(
                json!({"jsonrpc": "2.0", "id": "x1", "method": "tools/call", "params": {
                "name": "echo", "arguments": {"message": "raw"},
                "_meta": {"io.modelcontextprotocol/protocolVersion": STATELESS,
                          "io.modelcontextprotocol/clientCapabilities": {}}}}),
            ),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let v = reply.json();
    assert_eq!(v["id"], "x1", "{v}");
    assert_eq!(v["result"]["content"][0]["text"], "raw", "{v}");
    assert!(
        reply.header("mcp-session-id").is_none(),
        "the member session's id stays inside: {reply:?}"
    );

    // Stopped, the member answers -32603 naming it; the other member's tool still works.
    let auth = fed.py_auth();
    fed.legacy.shutdown().await;
    let doc = python_client(
        &fed.gw.url(MIXED),
        &json!([
            {"op": "call_tool", "name": "echo", "arguments": {"message": "gone"}},
            {"op": "call_tool", "name": "add", "arguments": {"a": 2, "b": 2}},
        ]),
        &["--mode", "auto", "--header", &auth],
    )
    .await
    .unwrap();
    let e = py_err(&doc, 0, "mixed down");
    assert_eq!(e["code"], -32603, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("'legacy'"),
        "{e}"
    );
    assert_eq!(
        py_ok(&doc, 1, "mixed down")["structuredContent"],
        json!({"sum": 4})
    );
}

/// The TypeScript SDK: the same run, then it ends its session (DELETE), which ends the stateful
/// member's session too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_client_sees_one_server_and_ends_the_member_session() {
    if tools::node_modules().is_none() {
        return;
    }
    let Some(fed) = Fed::start("fed-ts").await else {
        return;
    };
    let what = "ts";
    let mut ops = fed_ops();
    let ops_list = ops.as_array_mut().unwrap();
    ops_list.push(json!({"op": "terminate_session"})); // 16
    let (p0, s0) = (fed.plain.requests().len(), fed.stateful.requests().len());
    let doc = ts_client(&fed.url(), &ops, &["--header", &fed.ts_auth()])
        .await
        .unwrap();
    let init = &doc["initialize"];
    assert!(init["error"].is_null(), "{doc:#}");
    assert_eq!(init["serverInfo"]["name"], FED, "{doc:#}");
    assert_eq!(
        init["capabilities"]["resources"]["subscribe"], true,
        "{doc:#}"
    );
    let session = init["sessionId"].as_str().unwrap_or_default();
    assert_eq!(
        session.split('.').count(),
        3,
        "a sealed session id <key>.<payload>.<mac>: {session:?}"
    );
    let version = init["protocolVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(VERSIONS.contains(&version.as_str()), "{doc:#}");

    let tools = ts_ok(&doc, 0, what);
    assert_eq!(name_set(&tools["items"], "name"), sorted(&FED_TOOLS));
    assert_eq!(tools["pages"], pages(FED_TOOLS.len()));
    assert_eq!(
        name_set(&ts_ok(&doc, 1, what)["items"], "name"),
        ["greet", "summarize"]
    );
    assert_eq!(
        name_set(&ts_ok(&doc, 2, what)["items"], "uri"),
        ["test://static/logo", "test://static/readme"]
    );
    assert_eq!(
        names(&ts_ok(&doc, 3, what)["items"], "uriTemplate"),
        ["test://template/{id}/data"]
    );
    assert_eq!(ts_ok(&doc, 4, what)["content"][0]["text"], "to plain");
    assert_eq!(ts_ok(&doc, 5, what)["content"][0]["text"], "to stateful");
    assert_eq!(ts_ok(&doc, 6, what)["structuredContent"], json!({"sum": 5}));
    assert_eq!(ts_ok(&doc, 7, what)["isError"], true);
    for i in [8, 9] {
        let r = &results(&doc)[i];
        assert_eq!(r["ok"], false, "operation {i}: {r:#}");
        assert_eq!(r["code"], -32602, "operation {i}: {r:#}");
    }
    assert_eq!(
        ts_ok(&doc, 10, what)["messages"][0]["content"]["text"],
        "Hello, Ada!"
    );
    assert_eq!(
        ts_ok(&doc, 11, what)["messages"][0]["content"]["text"],
        "Summarize (brief): t"
    );
    assert_eq!(
        ts_ok(&doc, 13, what)["contents"][0]["uri"],
        "test://static/logo"
    );
    assert_eq!(ts_ok(&doc, 15, what), &json!({}));
    ts_ok(&doc, 16, what);

    let (plain, stateful) = (since(&fed.plain, p0), since(&fed.stateful, s0));
    // The DELETE is the member's last request; the session checks look at the rest.
    let (deletes, rest): (Vec<_>, Vec<_>) =
        stateful.into_iter().partition(|r| r.method == "DELETE");
    assert_fed_run_upstreams(&plain, &rest, what);
    let member_session = assert_one_member_session(&rest, &version, what);
    assert_eq!(
        deletes.len(),
        1,
        "the stateful member's session was ended: {deletes:#?}"
    );
    assert_eq!(
        deletes[0].header("mcp-session-id"),
        Some(member_session.as_str()),
        "{deletes:#?}"
    );
    assert!(
        plain.iter().all(|r| r.method == "POST"),
        "the stateless member has no session to end: {plain:#?}"
    );
}

/// Progress notifications of a call to the stateful member stream through the filter as the
/// upstream sends them (not buffered to the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_streams_through_a_call_to_the_stateful_member() {
    let Some(fed) = Fed::start("fed-progress").await else {
        return;
    };
    let ops = json!([
        {"op": "call_tool", "name": "slow", "arguments": {"steps": 5, "interval_ms": 400}},
    ]);
    let mut ran = false;
    // `legacy` through the member's session; `auto` at 2026-07-28, without one.
    for (mode, version) in [("legacy", "2025-11-25"), ("auto", STATELESS)] {
        if tools::python().is_none() {
            break;
        }
        ran = true;
        let doc = python_client(
            &fed.url(),
            &ops,
            &["--mode", mode, "--header", &fed.py_auth()],
        )
        .await
        .unwrap();
        assert_eq!(doc["protocol_version"], version, "{doc:#}");
        let r = &results(&doc)[0];
        assert_eq!(
            py_ok(&doc, 0, mode)["content"][0]["text"],
            "done after 5 steps"
        );
        let progress = r["progress"].as_array().unwrap();
        let steps: Vec<f64> = progress
            .iter()
            .map(|p| p["progress"].as_f64().unwrap())
            .collect();
        assert_eq!(steps, [1.0, 2.0, 3.0, 4.0, 5.0], "{mode}: {doc:#}");
        let times = progress_times(&r["progress"], "t_s");
        assert_progress_streamed(&times, r["elapsed_s"].as_f64(), mode);
    }
    if tools::node_modules().is_some() {
        ran = true;
        let doc = ts_client(&fed.url(), &ops, &["--header", &fed.ts_auth()])
            .await
            .unwrap();
        assert_eq!(
            ts_ok(&doc, 0, "ts")["content"][0]["text"],
            "done after 5 steps"
        );
        let times = progress_times(&doc["progress"], "t");
        assert_progress_streamed(&times, None, "ts");
    }
    if ran {
        assert!(fed.plain.calls().is_empty(), "{:?}", fed.plain.calls());
        assert!(fed.stateful.calls().iter().all(|c| c == "slow"));
        assert!(!fed.stateful.calls().is_empty());
    }
}

/// A member that is down: a new session still opens, the lists are still complete (they come
/// from the catalog), the other member's tools work, and the stopped member's tools answer a
/// JSON-RPC error naming it. With every member down, the lists still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_member_leaves_the_other_working_and_lists_complete() {
    if tools::python().is_none() {
        return;
    }
    let Some(Fed {
        gw,
        plain,
        stateful,
        token,
        ..
    }) = Fed::start("fed-down").await
    else {
        return;
    };
    let auth = format!("Authorization: Bearer {token}");
    let url = gw.url(FED);
    plain.shutdown().await;

    let doc = python_client(
        &url,
        &json!([
            {"op": "list_tools"},                                                        // 0
            {"op": "list_prompts"},                                                      // 1
            {"op": "call_tool", "name": "stateful__echo", "arguments": {"message": "up"}}, // 2
            {"op": "call_tool", "name": "slow", "arguments": {"steps": 1, "interval_ms": 10}}, // 3
            {"op": "call_tool", "name": "plain__echo", "arguments": {"message": "down"}}, // 4
            {"op": "call_tool", "name": "add_numbers", "arguments": {"a": 1, "b": 2}},   // 5
            {"op": "get_prompt", "name": "summarize", "arguments": {"text": "t"}},       // 6
            {"op": "read_resource", "uri": "test://static/readme"},                      // 7
        ]),
        &["--mode", "legacy", "--header", &auth],
    )
    .await
    .unwrap();
    let what = "plain down";
    assert_eq!(doc["connected"], true, "{what}: {doc:#}");
    let tools = py_ok(&doc, 0, what);
    assert_eq!(
        name_set(&tools["tools"], "name"),
        sorted(&FED_TOOLS),
        "{what}"
    );
    assert_eq!(tools["pages"], pages(FED_TOOLS.len()), "{what}");
    assert_eq!(
        name_set(&py_ok(&doc, 1, what)["prompts"], "name"),
        ["greet", "summarize"]
    );
    assert_eq!(py_ok(&doc, 2, what)["content"][0]["text"], "up");
    assert_eq!(
        py_ok(&doc, 3, what)["content"][0]["text"],
        "done after 1 steps"
    );
    assert_eq!(
        py_ok(&doc, 6, what)["messages"][0]["content"]["text"],
        "Summarize (brief): t"
    );
    for i in [4, 5, 7] {
        assert_member_unavailable(py_err(&doc, i, what), "plain", what);
    }
    assert_eq!(stateful.calls(), ["echo", "slow"]);

    // Every member down: the session opens and the catalog is still listed in full.
    stateful.shutdown().await;
    let doc = python_client(
        &url,
        &json!([
            {"op": "list_tools"},
            {"op": "list_resources"},
            {"op": "list_resource_templates"},
            {"op": "call_tool", "name": "stateful__echo", "arguments": {"message": "down"}},
        ]),
        &["--mode", "legacy", "--header", &auth],
    )
    .await
    .unwrap();
    let what = "all down";
    assert_eq!(doc["connected"], true, "{what}: {doc:#}");
    let tools = py_ok(&doc, 0, what);
    assert_eq!(
        name_set(&tools["tools"], "name"),
        sorted(&FED_TOOLS),
        "{what}"
    );
    assert_eq!(
        name_set(&py_ok(&doc, 1, what)["resources"], "uri"),
        ["test://static/logo", "test://static/readme"]
    );
    assert_eq!(
        names(&py_ok(&doc, 2, what)["resourceTemplates"], "uriTemplate"),
        ["test://template/{id}/data"]
    );
    assert_member_unavailable(py_err(&doc, 3, what), "stateful", what);
    gw.stop().await;
}

/// The documented error for an item of a member that failed to open its session.
fn assert_member_unavailable(e: &Value, member: &str, what: &str) {
    assert_eq!(e["code"], -32603, "{what}: {e}");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("MCP server '{member}' is unavailable")),
        "{what}: {message:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP: sealed sessions, GET/DELETE, Host/Origin
// ---------------------------------------------------------------------------------------------

/// What a raw request got back.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The JSON-RPC message: the body, or the SSE event carrying a response.
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| {
            self.body
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .find(|v| v.get("id").is_some())
                .unwrap_or_else(|| panic!("no JSON-RPC message in {self:?}"))
        })
    }
}

/// One raw request to a virtual server.
struct Raw<'a> {
    client: reqwest::Client,
    url: String,
    token: &'a str,
}

impl Raw<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        session: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut rq = self
            .client
            .request(method, &self.url)
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {}", self.token));
        if let Some(s) = session {
            rq = rq.header("mcp-session-id", s);
        }
        for (k, v) in headers {
            rq = rq.header(*k, *v);
        }
        if let Some(b) = body {
            rq = rq
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = rq
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.url));
        Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap_or_default(),
        }
    }

    async fn post(&self, session: Option<&str>, body: Value) -> Reply {
        self.send(reqwest::Method::POST, session, &[], Some(body))
            .await
    }

    /// `initialize` at `version`; returns the reply and the session id it minted.
    async fn initialize(&self, version: &str) -> (Reply, String) {
        let reply = self
            .post(
                None,
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": version,
                    "capabilities": {},
                    "clientInfo": {"name": "raw-e2e", "version": "1"}
                }}),
            )
            .await;
        assert_eq!(reply.status, 200, "initialize: {reply:?}");
        let session = reply
            .header("mcp-session-id")
            .unwrap_or_else(|| panic!("initialize minted no session: {reply:?}"))
            .to_owned();
        (reply, session)
    }
}

fn call(id: u64, name: &str, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": name, "arguments": {"message": message}}})
}

/// HTTP 404 with JSON-RPC -32001 "Session not found", keeping the id: what makes a client
/// initialize again.
#[track_caller]
fn assert_session_not_found(reply: &Reply, id: u64, what: &str) {
    assert_eq!(reply.status, 404, "{what}: {reply:?}");
    let v = reply.json();
    assert_eq!(v["id"], id, "{what}: {v}");
    assert_eq!(v["error"]["code"], -32001, "{what}: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Session not found"),
        "{what}: {v}"
    );
}

/// Flips one character of segment `i` of a sealed session id.
fn tamper(session: &str, i: usize) -> String {
    let mut parts: Vec<String> = session.split('.').map(str::to_owned).collect();
    let seg = &mut parts[i];
    let mid = seg.len() / 2;
    let c = seg.as_bytes()[mid];
    let flipped = if c == b'A' { 'B' } else { 'A' };
    seg.replace_range(mid..=mid, &flipped.to_string());
    parts.join(".")
}

/// The session id is sealed and bound: tampered, from another virtual server or another caller
/// is 404; a valid one reaches each member with that member's own session; GET is 405 on a
/// multi-member virtual server; DELETE ends the stateful member's session; `server/discover`
/// gets -32022; a foreign `Host` or `Origin` is 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_sealed_to_their_virtual_server_and_caller() {
    let Some(fed) = Fed::start("fed-raw").await else {
        return;
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let raw = Raw {
        client: client.clone(),
        url: fed.url(),
        token: &fed.token,
    };
    let (p0, s0) = (fed.plain.requests().len(), fed.stateful.requests().len());

    // initialize: answered by the filter, at the client's version, with a sealed session.
    let (reply, session) = raw.initialize("2025-06-18").await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
    let v = reply.json();
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18", "{v}");
    assert_eq!(v["result"]["serverInfo"]["name"], FED, "{v}");
    assert_eq!(session.split('.').count(), 3, "{session}");
    // A version the gateway does not speak: its newest.
    let (reply, _) = raw.initialize("1999-01-01").await;
    assert_eq!(reply.json()["result"]["protocolVersion"], "2025-11-25");

    // `notifications/initialized` on a multi-member virtual server: 202, forwarded nowhere (the
    // filter sent each member its own).
    let reply = raw
        .post(
            Some(&session),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let reply = raw
        .post(
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
        )
        .await;
    assert_eq!(reply.json()["result"], json!({}), "{reply:?}");

    // Calls reach each member with its own session (none for the stateless one).
    let reply = raw
        .post(Some(&session), call(3, "stateful__echo", "s"))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["result"]["content"][0]["text"],
        "s",
        "{reply:?}"
    );
    let reply = raw.post(Some(&session), call(4, "plain__echo", "p")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["result"]["content"][0]["text"],
        "p",
        "{reply:?}"
    );
    let stateful = since(&fed.stateful, s0);
    let plain = since(&fed.plain, p0);
    assert_nothing_local_forwarded(&stateful, "raw");
    assert_nothing_local_forwarded(&plain, "raw");
    assert_stateless_member(&plain, "raw");
    // Two client initializes, two member sessions; the call used the first one's.
    let call_rq = stateful
        .iter()
        .find(|r| rpc_method(r) == "tools/call")
        .unwrap();
    let member_session = call_rq.header("mcp-session-id").unwrap().to_owned();
    assert_ne!(
        member_session, session,
        "the client's id is not the member's"
    );
    assert!(
        !session.contains(&member_session),
        "the member's id is sealed, not shown"
    );
    assert_eq!(call_rq.header("mcp-protocol-version"), Some("2025-06-18"));
    let inits = params_of(&stateful, "initialize");
    assert_eq!(inits.len(), 2, "{stateful:#?}");
    assert_eq!(inits[0]["protocolVersion"], "2025-06-18");
    assert_eq!(inits[0]["clientInfo"]["name"], "toolmesh");
    assert_eq!(params_of(&plain, "initialize").len(), 2, "{plain:#?}");

    // A client notification (here a cancellation) goes to every member, each in its own
    // session, since which one it concerns is unknown; the client gets 202.
    let (s1, p1) = (fed.stateful.requests().len(), fed.plain.requests().len());
    let reply = raw
        .post(
            Some(&session),
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                   "params": {"requestId": 99, "reason": "changed my mind"}}),
        )
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let cancelled = |rs: Vec<RecordedRequest>| -> Vec<RecordedRequest> {
        rs.into_iter()
            .filter(|r| rpc_method(r) == "notifications/cancelled")
            .collect()
    };
    let at_stateful = cancelled(since(&fed.stateful, s1));
    assert_eq!(at_stateful.len(), 1, "{at_stateful:#?}");
    assert_eq!(
        at_stateful[0].header("mcp-session-id"),
        Some(member_session.as_str())
    );
    assert_eq!(
        at_stateful[0].body.as_ref().unwrap()["params"]["requestId"],
        99
    );
    let at_plain = cancelled(since(&fed.plain, p1));
    assert_eq!(at_plain.len(), 1, "{at_plain:#?}");
    assert_eq!(at_plain[0].header("mcp-session-id"), None);
    assert_eq!(calls_in(&plain), ["echo"]);

    // Tampered, garbage, another virtual server's, another caller's: 404, nothing forwarded.
    let (p1, s1) = (fed.plain.requests().len(), fed.stateful.requests().len());
    for (what, bad) in [
        ("tampered mac", tamper(&session, 2)),
        ("tampered payload", tamper(&session, 1)),
        (
            "unknown key",
            format!("zz{}", &session[session.find('.').unwrap()..]),
        ),
        ("garbage", "not-a-session".to_owned()),
    ] {
        let reply = raw.post(Some(&bad), call(5, "stateful__echo", "x")).await;
        assert_session_not_found(&reply, 5, what);
    }
    let solo = Raw {
        client: client.clone(),
        url: fed.gw.url(SOLO),
        token: &fed.token,
    };
    let (_, solo_session) = solo.initialize("2025-11-25").await;
    let reply = raw
        .post(Some(&solo_session), call(6, "stateful__echo", "x"))
        .await;
    assert_session_not_found(&reply, 6, "a session of another virtual server");
    let reply = solo.post(Some(&session), call(7, "echo", "x")).await;
    assert_session_not_found(&reply, 7, "fed's session on solo");
    let other_token = fed.gw.token("someone-else", &[FED]).await;
    let other_caller = Raw {
        client: client.clone(),
        url: fed.url(),
        token: &other_token,
    };
    let reply = other_caller
        .post(Some(&session), call(8, "stateful__echo", "x"))
        .await;
    assert_session_not_found(&reply, 8, "another caller's session");
    assert_eq!(
        fed.plain.requests().len(),
        p1,
        "{:#?}",
        since(&fed.plain, p1)
    );
    // (solo's initialize opened a session on the stateful server; nothing else reached it.)
    let after = since(&fed.stateful, s1);
    assert!(
        after
            .iter()
            .all(|r| matches!(rpc_method(r), "initialize" | "notifications/initialized")),
        "{after:#?}"
    );

    // GET (the notification stream) is refused on a multi-member virtual server.
    let reply = raw
        .send(
            reqwest::Method::GET,
            Some(&session),
            &[("accept", "text/event-stream")],
            None,
        )
        .await;
    assert_eq!(reply.status, 405, "{reply:?}");
    let allow = reply.header("allow").unwrap_or_default();
    assert!(
        allow.contains("POST") && allow.contains("DELETE"),
        "{reply:?}"
    );
    assert!(reply.json()["error"]["code"].is_i64(), "{reply:?}");

    // The 2026-07-28 probe, answered by the filter; `mixed` (a member speaks only the
    // handshake) answers the same. Without the 2026-07-28 header: -32022 with the versions.
    let discover = json!({"jsonrpc": "2.0", "id": 9, "method": "server/discover", "params": {
        "_meta": {"io.modelcontextprotocol/protocolVersion": STATELESS,
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let probe = [
        ("mcp-protocol-version", STATELESS),
        ("mcp-method", "server/discover"),
    ];
    let reply = raw
        .send(reqwest::Method::POST, None, &probe, Some(discover.clone()))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let v = reply.json();
    assert_eq!(v["id"], 9, "{v}");
    let mut supported = vec![STATELESS];
    supported.extend(VERSIONS);
    assert_eq!(v["result"]["supportedVersions"], json!(supported), "{v}");
    assert_eq!(
        v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], FED,
        "{v}"
    );
    assert_eq!(
        v["result"]["capabilities"]["resources"]["subscribe"], true,
        "{v}"
    );
    let mixed = Raw {
        client: client.clone(),
        url: fed.gw.url(MIXED),
        token: &fed.token,
    };
    let reply = mixed
        .send(reqwest::Method::POST, None, &probe, Some(discover.clone()))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["result"]["supportedVersions"],
        json!(supported)
    );
    let reply = mixed.post(None, discover).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let v = reply.json();
    assert_eq!(v["error"]["code"], -32022, "{v}");
    assert_eq!(v["error"]["data"]["supported"], json!(supported), "{v}");
    assert_eq!(v["error"]["data"]["requested"], STATELESS, "{v}");

    // DELETE ends the stateful member's session (its server sees the DELETE with its own
    // session id); the stateless member has none to end.
    let (p2, s2) = (fed.plain.requests().len(), fed.stateful.requests().len());
    let reply = raw
        .send(reqwest::Method::DELETE, Some(&session), &[], None)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let deletes: Vec<_> = since(&fed.stateful, s2)
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert_eq!(
        deletes[0].header("mcp-session-id"),
        Some(member_session.as_str())
    );
    assert!(
        since(&fed.plain, p2).iter().all(|r| r.method != "DELETE"),
        "{:#?}",
        since(&fed.plain, p2)
    );
    // The member session is gone: the stateful server refuses it (its own 404, passed on).
    let s3 = fed.stateful.requests().len();
    let reply = raw
        .post(Some(&session), call(10, "stateful__echo", "x"))
        .await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(since(&fed.stateful, s3).len(), 1, "forwarded to the member");
    assert_eq!(
        fed.stateful.calls(),
        ["echo"],
        "the ended session served no call"
    );

    // Host and Origin: only loopback names and the allowed host.
    let (p4, s4) = (fed.plain.requests().len(), fed.stateful.requests().len());
    for (headers, status) in [
        (vec![("host", "evil.example.com")], 403),
        (vec![("host", "evil.example.com:8080")], 403),
        (vec![("origin", "http://evil.example.com")], 403),
        (vec![("origin", "https://evil.example.com:8443")], 403),
        (vec![("host", ALLOWED_HOST)], 200),
        (vec![("host", "localhost")], 200),
        (vec![("origin", "http://localhost:3000")], 200),
    ] {
        let reply = raw
            .send(
                reqwest::Method::POST,
                None,
                &headers,
                Some(call(11, "plain__echo", "h")),
            )
            .await;
        assert_eq!(reply.status, status, "{headers:?}: {reply:?}");
        if status == 403 {
            let v = reply.json();
            // Decided from the headers, before the body: the id is not known (null).
            assert_eq!(v["error"]["code"], -32600, "{v}");
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("evil.example.com") && message.contains("is not allowed"),
                "{v}"
            );
        } else {
            assert_eq!(
                reply.json()["result"]["content"][0]["text"],
                "h",
                "{reply:?}"
            );
        }
    }
    assert_eq!(calls_in(&since(&fed.plain, p4)), ["echo", "echo", "echo"]);
    assert!(since(&fed.stateful, s4).is_empty());
    fed.gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A member that never answers; logging/setLevel
// ---------------------------------------------------------------------------------------------

/// `--member-timeout-ms` for the silent-member test.
const MEMBER_TIMEOUT: Duration = Duration::from_millis(1000);

/// How much longer than [`MEMBER_TIMEOUT`] an `initialize` may take on a loaded two-core
/// machine (the bound is what matters: without it, the client would wait forever).
const MEMBER_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// A TCP listener that accepts every connection, reads nothing, answers nothing and keeps it
/// open: an MCP server that hangs. Dropping it closes the listener and every connection.
struct SilentListener {
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentListener {
    async fn bind(addr: std::net::SocketAddr) -> SilentListener {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("binding the silent listener on {addr}: {e}"));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                open.push(stream);
            }
        });
        SilentListener { accepted, task }
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A member that accepts the connection but never answers `initialize` costs a new session at
/// most `--member-timeout-ms`: the client's `initialize` completes (measured) within the
/// timeout plus a wide margin, that member's tools answer -32603 naming it (without another
/// try), and the other member works, with its own session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_answers_costs_a_session_at_most_the_member_timeout() {
    const VS: &str = "hanging";
    // The silent member is registered while a real server answers at its address (discovery
    // must find it up), then replaced by a listener that never answers. The harness turns off
    // rediscovery, so the catalog keeps its tools.
    let stand_in = spawn(TestServerConfig::stateless_json()).await.unwrap();
    let stateful = spawn(TestServerConfig::default()).await.unwrap();
    let silent_addr = stand_in.addr();
    let timeout_ms = u32::try_from(MEMBER_TIMEOUT.as_millis()).unwrap();
    let Some(gw) = Gateway::builder("fed-silent")
        .configure(move |c| c.member_timeout_ms = timeout_ms)
        .mcp_server("silent", &stand_in.url())
        .mcp_server("stateful", &stateful.url())
        .virtual_server(json!({"name": VS, "tools": [
            {"mcp_server": "silent", "tool": "add"},
            {"mcp_server": "stateful", "tool": "echo"},
        ]}))
        .start()
        .await
    else {
        return;
    };
    let token = gw.token("agent", &[VS]).await;
    stand_in.shutdown().await;
    let silent = SilentListener::bind(silent_addr).await;
    let s0 = stateful.requests().len();

    let raw = Raw {
        client: reqwest::Client::builder()
            .timeout(MEMBER_TIMEOUT + MEMBER_TIMEOUT_MARGIN + Duration::from_secs(20))
            .build()
            .unwrap(),
        url: gw.url(VS),
        token: &token,
    };
    let started = std::time::Instant::now();
    let (reply, session) = raw.initialize("2025-06-18").await;
    let took = started.elapsed();
    eprintln!("initialize with a silent member took {took:?} (member timeout {MEMBER_TIMEOUT:?})");
    assert_eq!(
        reply.json()["result"]["serverInfo"]["name"],
        VS,
        "{reply:?}"
    );
    assert!(
        took < MEMBER_TIMEOUT + MEMBER_TIMEOUT_MARGIN,
        "initialize took {took:?} with a member timeout of {MEMBER_TIMEOUT:?}"
    );
    // It did wait for the silent member, which was tried: the bound is the member timeout.
    assert!(
        took >= MEMBER_TIMEOUT.mul_f64(0.9),
        "initialize took only {took:?}: the silent member was not waited for"
    );
    let tried = silent.accepted();
    assert!(
        tried >= 1,
        "the filter never connected to the silent member"
    );

    let reply = raw
        .post(
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}),
        )
        .await;
    let v = reply.json();
    assert_eq!(v["id"], 2, "{reply:?}");
    assert_member_unavailable(&v["error"], "silent", "raw");
    assert_eq!(
        silent.accepted(),
        tried,
        "the failed member was tried again within its session"
    );
    let reply = raw
        .post(Some(&session), call(3, "echo", "still here"))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["result"]["content"][0]["text"],
        "still here",
        "{reply:?}"
    );
    let member_session = assert_one_member_session(&since(&stateful, s0), "2025-06-18", "raw");
    eprintln!("the stateful member's session: {member_session}");

    // An official client sees the same: it connects within the bound, one tool fails naming
    // its server, the other works.
    let mut echoes = vec!["echo"];
    if tools::python().is_some() {
        let doc = python_client(
            &gw.url(VS),
            &json!([
                {"op": "call_tool", "name": "add", "arguments": {"a": 1, "b": 2}},
                {"op": "call_tool", "name": "echo", "arguments": {"message": "py"}},
            ]),
            &[
                "--mode",
                "legacy",
                "--header",
                &format!("Authorization: Bearer {token}"),
            ],
        )
        .await
        .unwrap();
        let what = "python, silent member";
        assert_eq!(doc["connected"], true, "{what}: {doc:#}");
        let connect = doc["connect_elapsed_s"].as_f64().unwrap_or(f64::MAX);
        eprintln!("{what}: connecting took {connect:.3} s");
        assert!(
            connect < (MEMBER_TIMEOUT + MEMBER_TIMEOUT_MARGIN).as_secs_f64(),
            "{what}: connecting took {connect} s"
        );
        assert_member_unavailable(py_err(&doc, 0, what), "silent", what);
        assert_eq!(py_ok(&doc, 1, what)["content"][0]["text"], "py", "{what}");
        echoes.push("echo");
    }
    assert_eq!(stateful.calls(), echoes);
    drop(silent);
    gw.stop().await;
}

/// `logging/setLevel` reaches the first member that declares `logging` (here the second member,
/// the conformance fixture server; the test server does not log), with that member's own
/// session, and no other member; the virtual server declares `logging`. A virtual server none
/// of whose members logs answers it itself (`{}`) and does not declare `logging`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_set_level_reaches_the_member_that_declares_logging() {
    const LOGS: &str = "logs";
    const QUIET: &str = "quiet";
    let plain = spawn(TestServerConfig::stateless_json()).await.unwrap();
    let stateful = spawn(TestServerConfig::default()).await.unwrap();
    let logging = toolmesh_e2e::test_servers::conformance::spawn()
        .await
        .unwrap();
    let Some(gw) = Gateway::builder("fed-logging")
        .mcp_server("plain", &plain.url())
        .mcp_server("stateful", &stateful.url())
        .mcp_server("fixtures", &logging.url())
        .virtual_server(json!({"name": LOGS, "tools": [
            {"mcp_server": "plain", "tool": "echo"},
            {"mcp_server": "fixtures", "tool": "test_simple_text"},
        ]}))
        .virtual_server(json!({"name": QUIET, "tools": [
            {"mcp_server": "plain", "tool": "echo"},
            {"mcp_server": "stateful", "tool": "slow"},
        ]}))
        .start()
        .await
    else {
        return;
    };
    let token = gw.token("agent", &[LOGS, QUIET]).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let set_level = |id: u64, level: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "logging/setLevel",
            "params": {"level": level}})
    };

    let (p0, s0, l0) = (
        plain.requests().len(),
        stateful.requests().len(),
        logging.requests().len(),
    );
    let logs = Raw {
        client: client.clone(),
        url: gw.url(LOGS),
        token: &token,
    };
    let (reply, session) = logs.initialize("2025-11-25").await;
    let caps = &reply.json()["result"]["capabilities"];
    assert!(caps["logging"].is_object(), "{caps}");
    let reply = logs.post(Some(&session), set_level(2, "warning")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let v = reply.json();
    assert_eq!(v["id"], 2, "{v}");
    assert_eq!(v["result"], json!({}), "{v}");
    let at_fixtures = since_conformance(&logging, l0);
    let member_session = assert_one_member_session(&at_fixtures, "2025-11-25", "logs");
    let levels = params_of(&at_fixtures, "logging/setLevel");
    assert_eq!(levels, [json!({"level": "warning"})], "{at_fixtures:#?}");
    let reached: Vec<_> = at_fixtures
        .iter()
        .filter(|r| rpc_method(r) == "logging/setLevel")
        .collect();
    assert_eq!(
        reached[0].header("mcp-session-id"),
        Some(member_session.as_str())
    );
    assert!(
        params_of(&since(&plain, p0), "logging/setLevel").is_empty(),
        "{:#?}",
        since(&plain, p0)
    );

    // No member logs: answered by the filter, nothing forwarded.
    let quiet = Raw {
        client,
        url: gw.url(QUIET),
        token: &token,
    };
    let (reply, session) = quiet.initialize("2025-11-25").await;
    let caps = &reply.json()["result"]["capabilities"];
    assert!(caps.get("logging").is_none(), "{caps}");
    let reply = quiet.post(Some(&session), set_level(3, "debug")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let v = reply.json();
    assert_eq!(v["id"], 3, "{v}");
    assert_eq!(v["result"], json!({}), "{v}");
    for (name, seen) in [
        ("plain", since(&plain, p0)),
        ("stateful", since(&stateful, s0)),
    ] {
        assert!(
            params_of(&seen, "logging/setLevel").is_empty(),
            "{name}: {seen:#?}"
        );
    }
    gw.stop().await;
}

/// The requests the conformance fixture server received since it had received `since`.
fn since_conformance(
    server: &toolmesh_e2e::test_servers::conformance::RunningConformanceServer,
    since: usize,
) -> Vec<RecordedRequest> {
    server.requests().into_iter().skip(since).collect()
}

/// No session store: a session opened through one Envoy is served by another. Two Envoys share
/// the MCP port (the kernel spreads new connections between them); one `initialize`, then
/// calls each on a new connection, all with the same session id: every call works, both Envoys
/// served some, and the stateful member saw every call on the one session the filter opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_envoy_serves_a_session_another_envoy_opened() {
    let Some(fed) = Fed::start("fed-replica-1").await else {
        return;
    };
    let second = fed.gw.start_envoy("fed-replica-2").await;
    fed.gw.wait_in_sync(2).await;
    let raw = Raw {
        // No connection reuse: each request is a new connection the kernel may give either.
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        url: fed.url(),
        token: &fed.token,
    };
    let s0 = fed.stateful.requests().len();
    let (_, session) = raw.initialize("2025-11-25").await;
    let calls = 24;
    for i in 0..calls {
        let reply = raw
            .post(
                Some(&session),
                call(100 + i, "stateful__echo", &format!("m{i}")),
            )
            .await;
        assert_eq!(reply.status, 200, "call {i}: {reply:?}");
        assert_eq!(
            reply.json()["result"]["content"][0]["text"],
            format!("m{i}"),
            "call {i}: {reply:?}"
        );
    }
    const RQ: &str = "wasmcustom.toolmesh.vs.fed.rq.tools_call";
    let first = fed.gw.envoy().stat(RQ).await.unwrap_or(0);
    let other = second.stat(RQ).await.unwrap_or(0);
    eprintln!("calls served: replica 1 {first}, replica 2 {other}");
    assert_eq!(first + other, calls, "every call counted by one Envoy");
    assert!(
        first > 0 && other > 0,
        "both Envoys served the session: {first} and {other}"
    );
    let stateful = since(&fed.stateful, s0);
    let sessions: std::collections::BTreeSet<&str> = stateful
        .iter()
        .filter(|r| rpc_method(r) == "tools/call")
        .filter_map(|r| r.header("mcp-session-id"))
        .collect();
    assert_eq!(
        sessions.len(),
        1,
        "one member session for every call: {sessions:?}"
    );
}
