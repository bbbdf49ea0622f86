//! The federation building blocks through the crate's public API, as the flow uses them: a
//! compiled policy's session keys seal and open a client session, and the filter's own answers
//! (`initialize`, the lists) come from the catalog.

use serde_json::{Value, json};
use toolmesh_filter::lists::ListKind;
use toolmesh_filter::local::{self, LocalError};
use toolmesh_filter::policy::CompiledPolicy;
use toolmesh_filter::session::{self, MemberSession, OpenError, SessionClaims};

const SECRET_A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const SECRET_B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

fn policy(keys: Value) -> CompiledPolicy {
    let snapshot = json!({
        "schema_version": 3,
        "catalog_version": "cat-7",
        "limits": {"list_page_size": 2, "allowed_hosts": ["Tools.Example.com", "*"]},
        "auth": {"jwks": "{}", "public_url": "https://MCP.example.com:8443/"},
        "sessions": {"keys": keys, "member_timeout_ms": 1500},
        "virtual_servers": [{"name": "team", "members": [
            {"mcp_server": "files", "cluster": "up_files", "path": "/mcp",
             "authority": "files:8080", "capabilities": {"resources": {"subscribe": true}},
             "tools": [{"name": "read", "upstream_name": "read_file",
                        "definition": {"name": "read_file", "description": "Read a file",
                                       "inputSchema": {"type": "object"}}}],
             "resources": [{"uri": "file:///readme"}]},
            {"mcp_server": "git", "cluster": "up_git", "path": "/git/mcp",
             "authority": "git:9000", "capabilities": {"logging": {}},
             "tools": [{"name": "log", "upstream_name": "log"},
                       {"name": "diff", "upstream_name": "diff"}],
             "prompts": [{"name": "review", "upstream_name": "review",
                          "definition": {"name": "review", "arguments": [{"name": "pr"}]}}]}
        ]}]
    });
    CompiledPolicy::from_json(snapshot.to_string().as_bytes()).expect("policy compiles")
}

fn claims() -> SessionClaims {
    SessionClaims {
        virtual_server: "team".into(),
        caller: "jti-1".into(),
        issued_s: 1_700_000_000,
        members: vec![
            (
                "files".into(),
                MemberSession::Open {
                    session_id: "abc-123".into(),
                    protocol_version: "2025-06-18".into(),
                },
            ),
            ("git".into(), MemberSession::Stateless),
        ],
    }
}

#[test]
fn compiled_policy_carries_the_federation_settings() {
    let p = policy(json!([{"id": "a", "secret": SECRET_A}]));
    assert_eq!(p.member_timeout_ms, 1500);
    assert_eq!(p.list_page_size, 2);
    assert_eq!(p.allowed_hosts, ["tools.example.com", "*"]);
    assert_eq!(p.public_host.as_deref(), Some("mcp.example.com"));
    let vs = p.virtual_server("team").expect("team");
    let m: Vec<_> = vs
        .members
        .iter()
        .map(|m| (&*m.authority, m.logging, m.completions, m.subscribe))
        .collect();
    assert_eq!(
        m,
        [
            ("files:8080", false, false, true),
            ("git:9000", true, false, false)
        ]
    );
}

#[test]
fn sessions_survive_key_rotation_and_refuse_tampering() {
    let old = policy(json!([{"id": "a", "secret": SECRET_A}]));
    let rotated = policy(json!([{"id": "b", "secret": SECRET_B}, {"id": "a", "secret": SECRET_A}]));
    let id = session::seal(&old.sessions, &claims()).expect("sealed");
    let opened = session::open(&rotated.sessions, &id).expect("opens after rotation");
    assert_eq!(opened, claims());
    assert_eq!(
        opened.member("files"),
        Some(&MemberSession::Open {
            session_id: "abc-123".into(),
            protocol_version: "2025-06-18".into()
        })
    );
    let new_id = session::seal(&rotated.sessions, &claims()).expect("sealed");
    assert!(new_id.starts_with("b."), "{new_id}");
    // A client editing its session (say, to claim another caller) is refused.
    let mut parts: Vec<String> = new_id.split('.').map(str::to_owned).collect();
    let mut forged = claims();
    forged.caller = "someone-else".into();
    let other = session::seal(&old.sessions, &forged).expect("sealed");
    parts[1] = other.split('.').nth(1).expect("payload").to_owned();
    assert_eq!(
        session::open(&rotated.sessions, &parts.join(".")),
        Err(OpenError::BadMac)
    );
}

#[test]
fn initialize_and_lists_come_from_the_catalog() {
    let p = policy(json!([{"id": "a", "secret": SECRET_A}]));
    let vs = p.virtual_server("team").expect("team");
    let version = local::negotiate_version(Some("2025-03-26"));
    let init: Value =
        serde_json::from_str(&local::initialize_result(&p, vs, version)).expect("json");
    assert_eq!(
        init,
        json!({"protocolVersion": "2025-03-26",
               "capabilities": {"tools": {}, "prompts": {}, "resources": {"subscribe": true},
                                "logging": {}},
               "serverInfo": {"name": "team", "version": "cat-7"}})
    );
    let page = |cursor: Option<&str>| -> Value {
        serde_json::from_str(&local::list_result(&p, vs, ListKind::Tools, cursor).expect("page"))
            .expect("json")
    };
    let first = page(None);
    assert_eq!(
        first["tools"],
        json!([{"name": "read", "description": "Read a file", "inputSchema": {"type": "object"}},
               {"name": "log", "inputSchema": {"type": "object"}}])
    );
    let second = page(first["nextCursor"].as_str());
    assert_eq!(
        second,
        json!({"tools": [{"name": "diff", "inputSchema": {"type": "object"}}]})
    );
    assert_eq!(
        local::list_result(&p, vs, ListKind::Tools, Some("bogus")),
        Err(LocalError::InvalidCursor)
    );
    let prompts: Value =
        serde_json::from_str(&local::list_result(&p, vs, ListKind::Prompts, None).expect("page"))
            .expect("json");
    assert_eq!(
        prompts,
        json!({"prompts": [{"name": "review", "arguments": [{"name": "pr"}]}]})
    );
}
