//! The one rule for the names a virtual server exposes its tools and prompts under.
//!
//! Within one virtual server and one kind (tools, prompts):
//! - an explicit `expose_as` always wins and must be unique;
//! - an item without one is exposed under its upstream name, unless another member MCP server
//!   offers an item of the same upstream name (also without `expose_as`): then every one of
//!   them is exposed as `{mcp_server}__{name}` ([`qualified_name`]). Only colliding names are
//!   qualified; the others keep their plain name.
//!
//! The rule looks at every member of the virtual server, served or not, so enabling, disabling
//! or an upstream dropping an item never renames another one; names depend only on the member
//! list (and its order, for who keeps a name in a conflict), which only a write of the virtual
//! server changes.
//!
//! The REST API refuses a member list with a [`NameProblem`] (naming the field); everything that
//! shows or serves names — the policy snapshot, the exposed definitions, the virtual server's
//! view, usage — calls [`member_names`], which reports the same problems for what is stored, so
//! a problem (a catalog written under an older rule) drops that one item from the gateway rather
//! than producing a snapshot the filter would refuse. In a conflict the item with `expose_as`
//! keeps the name; between equals, the earlier member.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::store::{ItemKind, MemberRecord};

/// Between the MCP server and the item name in a qualified name.
pub const QUALIFIER_SEPARATOR: &str = "__";

/// `{mcp_server}__{name}`: how an item whose name collides with another member's is exposed.
pub fn qualified_name(mcp_server: &str, name: &str) -> String {
    format!("{mcp_server}{QUALIFIER_SEPARATOR}{name}")
}

/// A tool or prompt member, as the naming rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameRef<'a> {
    /// The MCP server offering it.
    pub mcp_server: &'a str,
    /// The upstream name.
    pub item: &'a str,
    /// The explicit exposed name, if any.
    pub expose_as: Option<&'a str>,
}

/// Why a member cannot be exposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameProblem {
    /// The name it would get is outside the MCP naming rules (`qualified` when that is because
    /// its upstream name collides with another member's and was qualified).
    Invalid {
        /// The name it would get.
        name: String,
        /// Whether the name was qualified with the MCP server.
        qualified: bool,
    },
    /// Another member already has this name.
    Taken {
        /// The name.
        name: String,
        /// The index (in the same list) of the member that keeps it.
        by: usize,
        /// Whether that member got it through `expose_as`.
        by_alias: bool,
    },
}

/// The exposed name of each member of one kind, in order.
pub fn exposed_names(refs: &[NameRef<'_>]) -> Vec<Result<String, NameProblem>> {
    // Which MCP servers offer each upstream name without an alias.
    let mut offered_by: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for r in refs.iter().filter(|r| r.expose_as.is_none()) {
        offered_by.entry(r.item).or_default().insert(r.mcp_server);
    }
    let mut out: Vec<Result<String, NameProblem>> = refs
        .iter()
        .map(|r| {
            let (name, qualified) = match r.expose_as {
                Some(alias) => (alias.to_string(), false),
                None if offered_by.get(r.item).is_some_and(|s| s.len() > 1) => {
                    (qualified_name(r.mcp_server, r.item), true)
                }
                None => (r.item.to_string(), false),
            };
            if toolmesh_proto::is_mcp_name(&name) {
                Ok(name)
            } else {
                Err(NameProblem::Invalid { name, qualified })
            }
        })
        .collect();
    // Aliases claim their names first, then the rest, each in member order.
    let mut claimed: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    for aliased in [true, false] {
        for (i, r) in refs.iter().enumerate() {
            if r.expose_as.is_some() != aliased {
                continue;
            }
            let Ok(name) = &out[i] else { continue };
            if let Some(&(by, by_alias)) = claimed.get(name) {
                out[i] = Err(NameProblem::Taken {
                    name: name.clone(),
                    by,
                    by_alias,
                });
            } else {
                claimed.insert(name.clone(), (i, aliased));
            }
        }
    }
    out
}

/// The exposed name of every member of a stored virtual server, in order: tools and prompts by
/// [`exposed_names`] (each kind on its own), resources and templates by their URI.
pub fn member_names(members: &[MemberRecord]) -> Vec<Result<String, NameProblem>> {
    let mut out: Vec<Result<String, NameProblem>> =
        members.iter().map(|m| Ok(m.item.clone())).collect();
    for kind in [ItemKind::Tool, ItemKind::Prompt] {
        let idx: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].kind == kind)
            .collect();
        let refs: Vec<NameRef<'_>> = idx
            .iter()
            .map(|&i| NameRef {
                mcp_server: &members[i].mcp_server,
                item: &members[i].item,
                expose_as: members[i].expose_as.as_deref(),
            })
            .collect();
        for (k, name) in exposed_names(&refs).into_iter().enumerate() {
            out[idx[k]] = name.map_err(|p| match p {
                // Point at the member in the whole list.
                NameProblem::Taken { name, by, by_alias } => NameProblem::Taken {
                    name,
                    by: idx[by],
                    by_alias,
                },
                other => other,
            });
        }
    }
    out
}

/// [`member_names`] for serving: `Some(name)` for every member that can be exposed, `None`
/// (logged) for one with a [`NameProblem`].
pub fn served_names(virtual_server: &str, members: &[MemberRecord]) -> Vec<Option<String>> {
    member_names(members)
        .into_iter()
        .enumerate()
        .map(|(i, n)| match n {
            Ok(name) => Some(name),
            Err(problem) => {
                let m = &members[i];
                if m.active() {
                    tracing::warn!(
                        virtual_server,
                        mcp_server = %m.mcp_server,
                        item = %m.item,
                        kind = m.kind.human(),
                        problem = ?problem,
                        "not exposed: its name is invalid or taken by another member; give it an expose_as"
                    );
                }
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r<'a>(mcp_server: &'a str, item: &'a str, expose_as: Option<&'a str>) -> NameRef<'a> {
        NameRef {
            mcp_server,
            item,
            expose_as,
        }
    }

    fn ok(names: &[&str]) -> Vec<Result<String, NameProblem>> {
        names.iter().map(|n| Ok(n.to_string())).collect()
    }

    #[test]
    fn only_colliding_names_are_qualified() {
        let got = exposed_names(&[
            r("github", "search", None),
            r("gitlab", "search", None),
            r("github", "create_issue", None),
            r("jira", "search", Some("find")),
            r("jira", "create_issue", Some("jira_create")),
        ]);
        assert_eq!(
            got,
            ok(&[
                "github__search",
                "gitlab__search",
                "create_issue",
                "find",
                "jira_create"
            ])
        );
        // An aliased item does not make its upstream name collide.
        assert_eq!(
            exposed_names(&[r("a", "search", None), r("b", "search", Some("b_search"))]),
            ok(&["search", "b_search"])
        );
    }

    #[test]
    fn the_same_input_gives_the_same_names() {
        let refs = [
            r("b", "x", None),
            r("a", "x", None),
            r("c", "x", None),
            r("c", "y", None),
        ];
        let first = exposed_names(&refs);
        assert_eq!(first, ok(&["b__x", "a__x", "c__x", "y"]));
        assert_eq!(exposed_names(&refs), first);
    }

    #[test]
    fn an_alias_keeps_its_name_and_the_other_is_refused() {
        // An alias equal to another item's final name: the alias wins, wherever it is.
        assert_eq!(
            exposed_names(&[r("a", "echo", None), r("a", "filler", Some("echo"))]),
            vec![
                Err(NameProblem::Taken {
                    name: "echo".into(),
                    by: 1,
                    by_alias: true
                }),
                Ok("echo".into())
            ]
        );
        // Also equal to a qualified name.
        let got = exposed_names(&[
            r("a", "s", None),
            r("b", "s", None),
            r("c", "t", Some("a__s")),
        ]);
        assert_eq!(
            got[0],
            Err(NameProblem::Taken {
                name: "a__s".into(),
                by: 2,
                by_alias: true
            })
        );
        assert_eq!(got[1], Ok("b__s".into()));
        // Two equal aliases: the first keeps it.
        assert_eq!(
            exposed_names(&[r("a", "x", Some("n")), r("b", "y", Some("n"))])[1],
            Err(NameProblem::Taken {
                name: "n".into(),
                by: 0,
                by_alias: true
            })
        );
        // The same item twice without alias.
        assert_eq!(
            exposed_names(&[r("a", "x", None), r("a", "x", None)])[1],
            Err(NameProblem::Taken {
                name: "x".into(),
                by: 0,
                by_alias: false
            })
        );
        // ...but once renamed it may be exposed twice.
        assert_eq!(
            exposed_names(&[r("a", "x", None), r("a", "x", Some("x2"))]),
            ok(&["x", "x2"])
        );
    }

    #[test]
    fn a_qualified_name_must_still_be_an_mcp_name() {
        let long = "t".repeat(120);
        let got = exposed_names(&[r("server-a", &long, None), r("server-b", &long, None)]);
        assert_eq!(
            got[0],
            Err(NameProblem::Invalid {
                name: format!("server-a__{long}"),
                qualified: true
            })
        );
        assert!(matches!(got[1], Err(NameProblem::Invalid { .. })));
        // Alone, the same name is fine.
        assert_eq!(exposed_names(&[r("server-a", &long, None)]), ok(&[&long]));
    }

    #[test]
    fn members_are_named_per_kind_and_resources_by_uri() {
        let m = |kind, server: &str, item: &str| MemberRecord {
            kind,
            mcp_server: server.into(),
            item: item.into(),
            item_id: 1,
            expose_as: None,
            enabled: true,
            removed_upstream: false,
            drifted: false,
            definition: serde_json::json!({}),
        };
        let members = [
            m(ItemKind::Tool, "a", "x"),
            m(ItemKind::Prompt, "a", "x"),
            m(ItemKind::Tool, "b", "x"),
            m(ItemKind::Prompt, "b", "y"),
            m(ItemKind::Resource, "b", "test://x"),
            m(ItemKind::Tool, "b", "x"),
        ];
        assert_eq!(
            member_names(&members),
            vec![
                Ok("a__x".into()),
                Ok("x".into()),
                Ok("b__x".into()),
                Ok("y".into()),
                Ok("test://x".into()),
                Err(NameProblem::Taken {
                    name: "b__x".into(),
                    by: 2,
                    by_alias: false
                }),
            ]
        );
        // An inactive member still counts: disabling one never renames the other.
        let mut off = members[..3].to_vec();
        off[2].enabled = false;
        assert_eq!(member_names(&off)[0], Ok("a__x".into()));
        assert_eq!(
            served_names("vs", &members),
            vec![
                Some("a__x".into()),
                Some("x".into()),
                Some("b__x".into()),
                Some("y".into()),
                Some("test://x".into()),
                None
            ]
        );
    }
}
