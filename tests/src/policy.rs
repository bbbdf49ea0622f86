//! Hand-written policy snapshots for tests that run the filter without the control plane.
//!
//! Since snapshot schema 2 the filter answers `initialize` and the lists itself, from what the
//! policy carries: each item's catalog definition and each member's declared capabilities. A
//! hand-written member therefore needs the definitions the control plane would have discovered;
//! [`test_server_member`] copies them from the test server's own catalog
//! ([`toolmesh_test_servers::tool_definitions`] and friends), so a list through the filter shows
//! what the upstream itself lists, under the exposed names.

use std::net::SocketAddr;

use serde_json::{Map, Value};
use toolmesh_proto::{Member, NamedItem, ResourceItem, ResourceTemplateItem};

/// Builds a [`Member`] for the test server ([`toolmesh_test_servers`]) at an address: its
/// capabilities, and the chosen items with the server's own definitions.
#[derive(Debug, Clone)]
pub struct TestServerMember {
    member: Member,
}

/// A member `mcp_server` reached through Envoy cluster `cluster`, path `/mcp`, authority
/// `addr` (the upstream's `127.0.0.1:PORT`), with the test server's capabilities, speaking
/// protocol 2026-07-28 as the test server does (what discovery records), and no items yet.
pub fn test_server_member(mcp_server: &str, cluster: &str, addr: SocketAddr) -> TestServerMember {
    let mut member = Member::new(mcp_server, cluster, "/mcp", addr.to_string());
    member.capabilities = object(toolmesh_test_servers::capabilities());
    member.modern_versions = vec!["2026-07-28".into()];
    TestServerMember { member }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not a JSON object: {other}"),
    }
}

/// The definition in `defs` whose `key` is `value`; panics (naming it) when the test server has
/// no such item, so a typo in a test fails loudly.
fn definition(defs: Vec<Value>, key: &str, value: &str) -> Map<String, Value> {
    defs.into_iter()
        .find(|d| d.get(key).and_then(Value::as_str) == Some(value))
        .map(object)
        .unwrap_or_else(|| panic!("the test server has no item with {key} {value:?}"))
}

impl TestServerMember {
    /// Allow the test server's tool `upstream`, exposed as `exposed`.
    pub fn tool(mut self, exposed: &str, upstream: &str) -> Self {
        self.member.tools.push(NamedItem {
            definition: definition(toolmesh_test_servers::tool_definitions(0), "name", upstream),
            ..NamedItem::new(exposed, upstream)
        });
        self
    }

    /// Allow each of `names` under its own name.
    pub fn tools(self, names: &[&str]) -> Self {
        names.iter().fold(self, |m, n| m.tool(n, n))
    }

    /// Allow the test server's prompt `upstream`, exposed as `exposed`.
    pub fn prompt(mut self, exposed: &str, upstream: &str) -> Self {
        self.member.prompts.push(NamedItem {
            definition: definition(
                toolmesh_test_servers::prompt_definitions(),
                "name",
                upstream,
            ),
            ..NamedItem::new(exposed, upstream)
        });
        self
    }

    /// Allow the static resource `uri`.
    pub fn resource(mut self, uri: &str) -> Self {
        self.member.resources.push(ResourceItem {
            definition: definition(toolmesh_test_servers::resource_definitions(), "uri", uri),
            ..ResourceItem::new(uri)
        });
        self
    }

    /// Allow the resource template `uri_template`.
    pub fn template(mut self, uri_template: &str) -> Self {
        self.member.resource_templates.push(ResourceTemplateItem {
            definition: definition(
                toolmesh_test_servers::resource_template_definitions(),
                "uriTemplate",
                uri_template,
            ),
            ..ResourceTemplateItem::new(uri_template)
        });
        self
    }

    /// The member.
    pub fn build(self) -> Member {
        self.member
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_carry_the_test_servers_definitions_and_capabilities() {
        let addr: SocketAddr = "127.0.0.1:4321".parse().unwrap_or_else(|e| panic!("{e}"));
        let m = test_server_member("everything", "mcp_everything", addr)
            .tool("add_numbers", "add")
            .prompt("greet", "greet")
            .resource("test://static/readme")
            .template("test://template/{id}/data")
            .build();
        assert_eq!(m.authority, "127.0.0.1:4321");
        assert_eq!(m.capabilities["resources"]["subscribe"], true);
        assert_eq!(m.tools[0].name, "add_numbers");
        assert_eq!(m.tools[0].definition["name"], "add");
        assert_eq!(m.tools[0].definition["inputSchema"]["required"][0], "a");
        assert_eq!(m.prompts[0].definition["name"], "greet");
        assert_eq!(m.resources[0].definition["name"], "readme");
        assert_eq!(m.resource_templates[0].definition["name"], "data");
    }
}
