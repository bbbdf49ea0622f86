//! Pins the serialized form of the policy snapshot: a change here is a wire-contract change that
//! both the filter and the control plane must agree on (bump `SCHEMA_VERSION` if it is breaking).

use toolmesh_proto::*;

fn sample() -> PolicySnapshot {
    PolicySnapshot {
        schema_version: SCHEMA_VERSION,
        catalog_version: "7".into(),
        limits: Limits::default(),
        virtual_servers: vec![VirtualServer {
            name: "demo".into(),
            callers: Vec::new(),
            stale_tokens: Vec::new(),
            members: vec![Member {
                capabilities: serde_json::json!({"tools": {}, "logging": {}})
                    .as_object()
                    .cloned()
                    .unwrap(),
                modern_versions: vec!["2026-07-28".into()],
                tools: vec![NamedItem {
                    definition:
                        serde_json::json!({"name": "add", "inputSchema": {"type": "object"}})
                            .as_object()
                            .cloned()
                            .unwrap(),
                    ..NamedItem::new("add_numbers", "add")
                }],
                prompts: vec![NamedItem::new("greet", "greet")],
                resources: vec![ResourceItem::new("test://static/readme")],
                resource_templates: vec![ResourceTemplateItem::new("test://template/{id}/data")],
                ..Member::new("everything", "mcp_everything", "/mcp", "127.0.0.1:3001")
            }],
        }],
        revoked_token_ids: vec!["tok-1".into()],
        auth: None,
        sessions: Sessions {
            keys: vec![SessionKey {
                id: "k1".into(),
                secret: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            }],
            member_timeout_ms: DEFAULT_MEMBER_TIMEOUT_MS,
        },
    }
}

const GOLDEN: &str = r#"{"schema_version":3,"catalog_version":"7","limits":{"max_body_bytes":1048576,"list_page_size":100},"virtual_servers":[{"name":"demo","members":[{"mcp_server":"everything","cluster":"mcp_everything","path":"/mcp","authority":"127.0.0.1:3001","capabilities":{"logging":{},"tools":{}},"modern_versions":["2026-07-28"],"tools":[{"name":"add_numbers","upstream_name":"add","definition":{"inputSchema":{"type":"object"},"name":"add"}}],"prompts":[{"name":"greet","upstream_name":"greet"}],"resources":[{"uri":"test://static/readme"}],"resource_templates":[{"uri_template":"test://template/{id}/data"}]}]}],"revoked_token_ids":["tok-1"],"sessions":{"keys":[{"id":"k1","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}],"member_timeout_ms":5000}}"#;

#[test]
fn serialized_form_is_pinned() {
    assert_eq!(sample().to_json(), GOLDEN);
}

#[test]
fn golden_parses_back_to_the_same_snapshot() {
    assert_eq!(
        PolicySnapshot::from_json(GOLDEN.as_bytes()).unwrap(),
        sample()
    );
}

#[test]
fn unknown_schema_is_refused_by_version() {
    let err =
        PolicySnapshot::from_json(br#"{"schema_version":4,"catalog_version":"x"}"#).unwrap_err();
    assert_eq!(err, PolicyError::SchemaVersion { found: 4 });
}

#[test]
fn unknown_fields_are_refused() {
    let err = PolicySnapshot::from_json(
        br#"{"schema_version":3,"catalog_version":"x","virtual_server":[]}"#,
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::Parse(m) if m.contains("virtual_server")));
}

#[test]
fn errors_name_the_offending_field() {
    let mut s = sample();
    s.virtual_servers[0].members[0].tools[0].name = "bad name".into();
    let err = s.validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"virtual_servers[0].members[0].tools[0].name "bad name" is not a valid MCP name (1-128 chars of A-Z, a-z, 0-9, '_', '-', '.', '/')"#
    );

    let mut s = sample();
    s.virtual_servers[0].name = "Demo".into();
    assert!(
        matches!(s.validate(), Err(PolicyError::BadSlug { field, .. }) if field == "virtual_servers[0].name")
    );

    let mut s = sample();
    let dup = s.virtual_servers[0].members[0].tools[0].clone();
    s.virtual_servers[0].members[0].tools.push(dup);
    assert!(matches!(
        s.validate(),
        Err(PolicyError::Duplicate { kind: "tool", .. })
    ));

    let mut s = sample();
    s.virtual_servers[0].members[0].path = "mcp".into();
    assert!(
        matches!(s.validate(), Err(PolicyError::Invalid { field, .. }) if field.ends_with(".path"))
    );
}

#[test]
fn slugs_and_names() {
    assert!(is_slug("a") && is_slug("demo-1") && is_slug("9x_y"));
    assert!(
        !is_slug("")
            && !is_slug("-a")
            && !is_slug("A")
            && !is_slug("a.b")
            && !is_slug(&"a".repeat(64))
    );
    assert!(
        is_mcp_name("get_weather") && is_mcp_name("ns/tool.v2") && is_mcp_name(&"a".repeat(128))
    );
    assert!(
        !is_mcp_name("")
            && !is_mcp_name("a b")
            && !is_mcp_name("tоol")
            && !is_mcp_name(&"a".repeat(129))
    );
}
