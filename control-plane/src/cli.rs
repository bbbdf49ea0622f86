//! The catalog CLI: `toolmesh mcp-servers …`, `toolmesh virtual-servers …`, `toolmesh tools …`.
//!
//! Every command is a thin client of the REST API (so it works against a remote control plane
//! and is subject to the same validation): readable tables by default, the API's JSON with
//! `--json`. An API error prints the API's own message and the command exits non-zero.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// Base URL of the toolmesh REST API.
    #[arg(
        long,
        env = "TOOLMESH_API_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub api_url: String,
    /// Admin token.
    #[arg(
        long,
        env = "TOOLMESH_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `toolmesh mcp-servers …`
#[derive(Debug, clap::Subcommand)]
pub enum McpServersCmd {
    /// Register an MCP server (runs discovery).
    Add {
        /// Unique name (slug).
        name: String,
        /// MCP endpoint URL.
        #[arg(long)]
        url: String,
        /// `streamable-http` or `sse`.
        #[arg(long, default_value = "streamable-http")]
        transport: String,
        /// A header sent to the upstream, `Name: value` (repeatable). Stored encrypted.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// Tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// List MCP servers.
    List,
    /// Show one MCP server.
    Show {
        /// Name.
        name: String,
    },
    /// Run discovery now.
    Refresh {
        /// Name.
        name: String,
    },
    /// Delete an MCP server.
    Rm {
        /// Name.
        name: String,
        /// Also remove it from the virtual servers that use it.
        #[arg(long)]
        force: bool,
    },
}

/// `toolmesh virtual-servers …`
#[derive(Debug, clap::Subcommand)]
pub enum VirtualServersCmd {
    /// Create a virtual server.
    Create {
        /// Unique name (slug).
        name: String,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// A tool: `MCP_SERVER/TOOL` or `MCP_SERVER/TOOL=EXPOSED_NAME` (repeatable).
        #[arg(long = "tool")]
        tools: Vec<String>,
        /// A prompt: `MCP_SERVER/PROMPT[=EXPOSED_NAME]` (repeatable).
        #[arg(long = "prompt")]
        prompts: Vec<String>,
        /// A resource: `MCP_SERVER=URI` (repeatable).
        #[arg(long = "resource")]
        resources: Vec<String>,
        /// A resource template: `MCP_SERVER=URI_TEMPLATE` (repeatable).
        #[arg(long = "resource-template")]
        resource_templates: Vec<String>,
        /// Take the whole body (JSON, as for `POST /v1/virtual-servers`) from this file.
        #[arg(long, conflicts_with_all = ["tools", "prompts", "resources", "resource_templates", "description"])]
        file: Option<std::path::PathBuf>,
    },
    /// List virtual servers.
    List,
    /// Show one virtual server.
    Show {
        /// Name.
        name: String,
    },
    /// Delete a virtual server.
    Rm {
        /// Name.
        name: String,
    },
}

/// `toolmesh tools …`
#[derive(Debug, clap::Subcommand)]
pub enum ToolsCmd {
    /// List discovered tools.
    List {
        /// Only this MCP server's tools.
        #[arg(long)]
        mcp_server: Option<String>,
        /// Only tools of MCP servers with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Search text (name or description).
        #[arg(long)]
        q: Option<String>,
    },
}

/// A CLI failure: the message to print.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(opts: &ClientOpts) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: opts.api_url.trim_end_matches('/').to_string(),
            token: opts.token.clone().filter(|t| !t.is_empty()),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).query(query);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            CliError(format!(
                "cannot reach the toolmesh API at {}: {e}",
                self.base
            ))
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CliError(format!("reading the API's answer: {e}")))?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        let msg = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{status}: {value}"));
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
            " (set TOOLMESH_ADMIN_TOKEN or pass --token)"
        } else {
            ""
        };
        Err(CliError(format!("{msg}{hint}")))
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, CliError> {
        self.call(reqwest::Method::GET, path, query, None).await
    }

    /// Every page of a list.
    async fn get_all(&self, path: &str, query: &[(&str, String)]) -> Result<Value, CliError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = query.to_vec();
            q.push(("limit", "500".into()));
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page = self.get(path, &q).await?;
            if let Some(a) = page.get("items").and_then(Value::as_array) {
                items.extend(a.iter().cloned());
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        Ok(json!({ "items": items, "next_cursor": null }))
    }
}

fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// Render rows as an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    let first_line = s.lines().next().unwrap_or("");
    if first_line.chars().count() > n {
        format!("{}…", first_line.chars().take(n - 1).collect::<String>())
    } else {
        first_line.to_string()
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// The strings of the JSON array at `ptr` (empty when absent).
fn strings(v: &Value, ptr: &str) -> Vec<String> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn show_mcp_server(v: &Value) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<14} {value}\n"));
    for (label, ptr) in [
        ("name", "/name"),
        ("url", "/url"),
        ("transport", "/transport"),
        ("description", "/description"),
        ("cluster", "/cluster"),
        ("health", "/health/status"),
        ("last success", "/health/last_success_at"),
        ("last error", "/health/last_error"),
        ("last error at", "/health/last_error_at"),
        ("latency ms", "/health/latency_ms"),
        ("protocol", "/health/protocol_version"),
    ] {
        line(label, s(v, ptr));
    }
    let modern = strings(v, "/health/modern_versions");
    line(
        "stateless",
        if modern.is_empty() {
            "none".to_string()
        } else {
            modern.join(", ")
        },
    );
    for (label, ptr) in [
        ("server", "/health/server_info/name"),
        ("tools", "/counts/tools"),
        ("prompts", "/counts/prompts"),
        ("resources", "/counts/resources"),
        ("templates", "/counts/resource_templates"),
        ("drifted", "/counts/drifted"),
    ] {
        line(label, s(v, ptr));
    }
    line("tags", strings(v, "/tags").join(", "));
    let creds = strings(v, "/credential_header_names");
    line(
        "credentials",
        if creds.is_empty() {
            "none".to_string()
        } else {
            format!("headers {} (values hidden)", creds.join(", "))
        },
    );
    if let Some(c) = v.get("changes").filter(|c| !c.is_null()) {
        out.push_str(&format!(
            "{:<14} added {}, drifted {}, removed {}, restored {}\n",
            "changes",
            s(c, "/added"),
            s(c, "/drifted"),
            s(c, "/removed"),
            s(c, "/restored")
        ));
    }
    out
}

fn show_virtual_server(v: &Value) -> String {
    let mut out = String::new();
    for (label, ptr) in [
        ("name", "/name"),
        ("description", "/description"),
        ("mcp url", "/mcp_url"),
    ] {
        out.push_str(&format!("{label:<12} {}\n", s(v, ptr)));
    }
    let mut rows = Vec::new();
    for (kind, key, field) in [
        ("tool", "tools", "/tool"),
        ("prompt", "prompts", "/prompt"),
        ("resource", "resources", "/uri"),
        ("template", "resource_templates", "/uri_template"),
    ] {
        for m in v.get(key).and_then(Value::as_array).into_iter().flatten() {
            let exposed = match m.get("exposed_name").and_then(Value::as_str) {
                Some(e) => e.to_string(),
                None => s(m, field),
            };
            let mut status = if m.get("active") == Some(&Value::Bool(true)) {
                "active".to_string()
            } else {
                "inactive".to_string()
            };
            if m.get("drifted") == Some(&Value::Bool(true)) {
                status.push_str(", drifted");
            }
            rows.push(vec![
                kind.to_string(),
                exposed,
                s(m, "/mcp_server"),
                s(m, field),
                status,
            ]);
        }
    }
    out.push('\n');
    out.push_str(&table(
        &["KIND", "EXPOSED AS", "MCP SERVER", "UPSTREAM", "STATUS"],
        &rows,
    ));
    out
}

fn split_ref(raw: &str, sep: char, what: &str) -> Result<(String, String), CliError> {
    raw.split_once(sep)
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| CliError(format!("{what} {raw:?}: expected MCP_SERVER{sep}…")))
}

/// Run an `mcp-servers` command.
pub async fn mcp_servers(opts: &ClientOpts, cmd: McpServersCmd) -> Result<(), CliError> {
    let c = Client::new(opts);
    let out = match cmd {
        McpServersCmd::Add {
            name,
            url,
            transport,
            headers,
            description,
            tags,
        } => {
            let mut hmap = BTreeMap::new();
            for h in headers {
                let (k, v) = h
                    .split_once(':')
                    .ok_or_else(|| CliError(format!("--header {h:?}: expected 'Name: value'")))?;
                hmap.insert(k.trim().to_string(), v.trim().to_string());
            }
            let mut body =
                json!({ "name": name, "url": url, "transport": transport, "tags": tags });
            if !hmap.is_empty() {
                body["headers"] = json!(hmap);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let v = c
                .call(reqwest::Method::POST, "/v1/mcp-servers", &[], Some(&body))
                .await?;
            (v.clone(), show_mcp_server(&v))
        }
        McpServersCmd::List => {
            let v = c.get_all("/v1/mcp-servers", &[]).await?;
            let t = columns_table(
                &v["items"],
                &[
                    ("NAME", "/name"),
                    ("HEALTH", "/health/status"),
                    ("TOOLS", "/counts/tools"),
                    ("PROMPTS", "/counts/prompts"),
                    ("RESOURCES", "/counts/resources"),
                    ("DRIFTED", "/counts/drifted"),
                    ("TRANSPORT", "/transport"),
                    ("URL", "/url"),
                ],
            );
            (v, t)
        }
        McpServersCmd::Show { name } => {
            let v = c
                .get(&format!("/v1/mcp-servers/{}", enc(&name)), &[])
                .await?;
            (v.clone(), show_mcp_server(&v))
        }
        McpServersCmd::Refresh { name } => {
            let v = c
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/mcp-servers/{}/refresh", enc(&name)),
                    &[],
                    None,
                )
                .await?;
            (v.clone(), show_mcp_server(&v))
        }
        McpServersCmd::Rm { name, force } => {
            let q = if force {
                vec![("force", "true".to_string())]
            } else {
                vec![]
            };
            c.call(
                reqwest::Method::DELETE,
                &format!("/v1/mcp-servers/{}", enc(&name)),
                &q,
                None,
            )
            .await?;
            (
                json!({ "deleted": name }),
                format!("deleted mcp server {name}\n"),
            )
        }
    };
    emit(opts, out);
    Ok(())
}

/// Run a `virtual-servers` command.
pub async fn virtual_servers(opts: &ClientOpts, cmd: VirtualServersCmd) -> Result<(), CliError> {
    let c = Client::new(opts);
    let out = match cmd {
        VirtualServersCmd::Create {
            name,
            description,
            tools,
            prompts,
            resources,
            resource_templates,
            file,
        } => {
            let body = if let Some(path) = file {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
                let mut b: Value = serde_json::from_str(&text)
                    .map_err(|e| CliError(format!("{}: not JSON: {e}", path.display())))?;
                b["name"] = json!(name);
                b
            } else {
                let named = |raw: &Vec<String>, key: &str| -> Result<Vec<Value>, CliError> {
                    raw.iter()
                        .map(|r| {
                            let (server, rest) = split_ref(r, '/', key)?;
                            let (item, expose) = match rest.split_once('=') {
                                Some((i, e)) => (i.to_string(), Some(e.to_string())),
                                None => (rest, None),
                            };
                            let mut v = json!({ "mcp_server": server, key: item });
                            if let Some(e) = expose {
                                v["expose_as"] = json!(e);
                            }
                            Ok(v)
                        })
                        .collect()
                };
                let by_uri = |raw: &Vec<String>, key: &str| -> Result<Vec<Value>, CliError> {
                    raw.iter()
                        .map(|r| {
                            let (server, uri) = split_ref(r, '=', key)?;
                            Ok(json!({ "mcp_server": server, key: uri }))
                        })
                        .collect()
                };
                json!({
                    "name": name,
                    "description": description.unwrap_or_default(),
                    "tools": named(&tools, "tool")?,
                    "prompts": named(&prompts, "prompt")?,
                    "resources": by_uri(&resources, "uri")?,
                    "resource_templates": by_uri(&resource_templates, "uri_template")?,
                })
            };
            let v = c
                .call(
                    reqwest::Method::POST,
                    "/v1/virtual-servers",
                    &[],
                    Some(&body),
                )
                .await?;
            (v.clone(), show_virtual_server(&v))
        }
        VirtualServersCmd::List => {
            let v = c.get_all("/v1/virtual-servers", &[]).await?;
            let len = |m: &Value, k: &str| m[k].as_array().map_or(0, Vec::len).to_string();
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    vec![
                        s(m, "/name"),
                        len(m, "tools"),
                        len(m, "prompts"),
                        len(m, "resources"),
                        len(m, "resource_templates"),
                        s(m, "/mcp_url"),
                    ]
                })
                .collect();
            let t = table(
                &[
                    "NAME",
                    "TOOLS",
                    "PROMPTS",
                    "RESOURCES",
                    "TEMPLATES",
                    "MCP URL",
                ],
                &rows,
            );
            (v, t)
        }
        VirtualServersCmd::Show { name } => {
            let v = c
                .get(&format!("/v1/virtual-servers/{}", enc(&name)), &[])
                .await?;
            (v.clone(), show_virtual_server(&v))
        }
        VirtualServersCmd::Rm { name } => {
            c.call(
                reqwest::Method::DELETE,
                &format!("/v1/virtual-servers/{}", enc(&name)),
                &[],
                None,
            )
            .await?;
            (
                json!({ "deleted": name }),
                format!("deleted virtual server {name}\n"),
            )
        }
    };
    emit(opts, out);
    Ok(())
}

/// Run a `tools` command.
pub async fn tools(opts: &ClientOpts, cmd: ToolsCmd) -> Result<(), CliError> {
    let c = Client::new(opts);
    let ToolsCmd::List { mcp_server, tag, q } = cmd;
    let mut query = Vec::new();
    for (k, v) in [("mcp_server", mcp_server), ("tag", tag), ("q", q)] {
        if let Some(v) = v {
            query.push((k, v));
        }
    }
    let v = c.get_all("/v1/tools", &query).await?;
    let rows: Vec<Vec<String>> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let mut state = if t["enabled"] == json!(true) {
                "enabled".to_string()
            } else {
                "disabled".to_string()
            };
            if t["drifted"] == json!(true) {
                state.push_str(", drifted");
            }
            if t["removed_upstream"] == json!(true) {
                state.push_str(", removed upstream");
            }
            vec![
                s(t, "/id"),
                s(t, "/mcp_server"),
                s(t, "/name"),
                state,
                truncate(&s(t, "/description"), 60),
            ]
        })
        .collect();
    let t = table(&["ID", "MCP SERVER", "NAME", "STATE", "DESCRIPTION"], &rows);
    emit(opts, (v, t));
    Ok(())
}

/// `toolmesh tokens …`
#[derive(Debug, clap::Subcommand)]
pub enum TokensCmd {
    /// Issue a token scoped to virtual servers; prints the token once.
    Create {
        /// Who or what holds it (an agent, a team).
        name: String,
        /// A virtual server it opens (repeatable), or `*` for all.
        #[arg(long = "virtual-server", required = true)]
        virtual_servers: Vec<String>,
        /// Lifetime in seconds (omit for a token that does not expire).
        #[arg(long)]
        expires_in: Option<u64>,
        /// A source network it may be used from, `10.0.0.0/8` (repeatable; default anywhere).
        #[arg(long = "source-cidr")]
        source_cidrs: Vec<String>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
    },
    /// List tokens (metadata only).
    List,
    /// Revoke a token: Envoy refuses it within about a second.
    Revoke {
        /// Token id (`tok_…`).
        id: String,
    },
    /// Make a new signing key the active one (older tokens stay valid until they expire).
    RotateKey,
}

/// Run a `tokens` command.
pub async fn tokens(opts: &ClientOpts, cmd: TokensCmd) -> Result<(), CliError> {
    let c = Client::new(opts);
    let out = match cmd {
        TokensCmd::Create {
            name,
            virtual_servers,
            expires_in,
            source_cidrs,
            description,
        } => {
            let mut body = json!({"name": name, "virtual_servers": virtual_servers, "source_cidrs": source_cidrs});
            if let Some(e) = expires_in {
                body["expires_in"] = json!(e);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let v = c
                .call(reqwest::Method::POST, "/v1/tokens", &[], Some(&body))
                .await?;
            let text = format!(
                "token: {}\nid: {}\nvirtual servers: {}\nexpires: {}\nThe token is shown only now; send it as 'Authorization: Bearer <token>'.\n",
                s(&v, "/token"),
                s(&v, "/id"),
                v["virtual_servers"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                s(&v, "/expires_at"),
            );
            (v, text)
        }
        TokensCmd::List => {
            let v = c.get_all("/v1/tokens", &[]).await?;
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let join = |k: &str| {
                        t[k].as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(Value::as_str)
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .filter(|j| !j.is_empty())
                            .unwrap_or_else(|| "-".into())
                    };
                    vec![
                        s(t, "/id"),
                        truncate(&s(t, "/name"), 30),
                        join("virtual_servers"),
                        join("source_cidrs"),
                        s(t, "/status"),
                        s(t, "/expires_at"),
                    ]
                })
                .collect();
            let t = table(
                &[
                    "ID",
                    "NAME",
                    "VIRTUAL SERVERS",
                    "SOURCE CIDRS",
                    "STATUS",
                    "EXPIRES",
                ],
                &rows,
            );
            (v, t)
        }
        TokensCmd::Revoke { id } => {
            let v = c
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/tokens/{}", enc(&id)),
                    &[],
                    None,
                )
                .await?;
            let text = format!("revoked token {} ({})\n", s(&v, "/id"), s(&v, "/name"));
            (v, text)
        }
        TokensCmd::RotateKey => {
            let v = c
                .call(reqwest::Method::POST, "/v1/keys/rotate", &[], None)
                .await?;
            let text = format!(
                "new signing key {}; tokens signed by older keys stay valid until they expire\n",
                s(&v, "/kid")
            );
            (v, text)
        }
    };
    emit(opts, out);
    Ok(())
}

/// `toolmesh usage …`
#[derive(Debug, clap::Subcommand)]
pub enum UsageCmd {
    /// Calls, errors, denials, latency and last call per tool, summed over every Envoy.
    Tools {
        /// Start of the window: a duration before now (`30m`, `24h`, `7d`) or RFC 3339.
        #[arg(long, default_value = "24h")]
        since: String,
        /// Only this virtual server.
        #[arg(long)]
        virtual_server: Option<String>,
        /// Only this MCP server.
        #[arg(long)]
        mcp_server: Option<String>,
        /// `calls`, `errors`, `denied`, `p99` or `last_called`.
        #[arg(long, default_value = "calls")]
        sort: String,
    },
    /// The same per virtual server.
    #[command(name = "virtual-servers")]
    VirtualServers {
        /// Start of the window.
        #[arg(long, default_value = "24h")]
        since: String,
    },
    /// Calls, errors, denials, p50/p95/p99 latency and last activity per token and virtual
    /// server (the tokens with per-token stats: see `--caller-stats-limit`).
    Tokens {
        /// Start of the window.
        #[arg(long, default_value = "24h")]
        since: String,
        /// Only this virtual server.
        #[arg(long)]
        virtual_server: Option<String>,
        /// Only this token id (`tok_…`).
        #[arg(long)]
        token_id: Option<String>,
        /// `calls`, `errors`, `denied`, `p99` or `last_seen`.
        #[arg(long, default_value = "calls")]
        sort: String,
    },
    /// Exposed tools nobody called, tools no virtual server exposes, possible duplicates.
    Unused {
        /// Start of the window.
        #[arg(long, default_value = "24h")]
        since: String,
    },
}

fn ms(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_f64)
        .map_or_else(|| "-".into(), |x| format!("{x}"))
}

/// A table of `items` (a JSON array) with one column per `(header, JSON pointer)`; a pointer
/// ending in `_ms` is a latency ([`ms`]), anything else is shown as is ([`s`]).
fn columns_table(items: &Value, columns: &[(&str, &str)]) -> String {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            columns
                .iter()
                .map(|(_, ptr)| {
                    if ptr.ends_with("_ms") {
                        ms(item, ptr)
                    } else {
                        s(item, ptr)
                    }
                })
                .collect()
        })
        .collect();
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    table(&headers, &rows)
}

/// Run a `toolmesh usage` command.
pub async fn usage(opts: &ClientOpts, cmd: UsageCmd) -> Result<(), CliError> {
    let c = Client::new(opts);
    let out = match cmd {
        UsageCmd::Tools {
            since,
            virtual_server,
            mcp_server,
            sort,
        } => {
            let mut q = vec![("since", since), ("sort", sort)];
            q.extend(virtual_server.map(|v| ("virtual_server", v)));
            q.extend(mcp_server.map(|v| ("mcp_server", v)));
            let v = c.get("/v1/usage/tools", &q).await?;
            let t = columns_table(
                &v["items"],
                &[
                    ("VIRTUAL SERVER", "/virtual_server"),
                    ("MCP SERVER", "/mcp_server"),
                    ("TOOL", "/tool"),
                    ("CALLS", "/calls"),
                    ("ERRORS", "/errors"),
                    ("DENIED", "/denied"),
                    ("P50 MS", "/p50_ms"),
                    ("P95 MS", "/p95_ms"),
                    ("P99 MS", "/p99_ms"),
                    ("LAST CALLED", "/last_called"),
                ],
            );
            (v, t)
        }
        UsageCmd::VirtualServers { since } => {
            let v = c
                .get("/v1/usage/virtual-servers", &[("since", since)])
                .await?;
            let t = columns_table(
                &v["items"],
                &[
                    ("VIRTUAL SERVER", "/virtual_server"),
                    ("REQUESTS", "/requests"),
                    ("CALLS", "/calls"),
                    ("ERRORS", "/errors"),
                    ("DENIED", "/denied"),
                    ("TOOLS CALLED", "/tools_called"),
                    ("P99 MS", "/p99_ms"),
                    ("LAST CALLED", "/last_called"),
                ],
            );
            (v, t)
        }
        UsageCmd::Tokens {
            since,
            virtual_server,
            token_id,
            sort,
        } => {
            let mut q = vec![("since", since), ("sort", sort)];
            q.extend(virtual_server.map(|v| ("virtual_server", v)));
            q.extend(token_id.map(|v| ("token", v)));
            let v = c.get("/v1/usage/tokens", &q).await?;
            let t = columns_table(
                &v["items"],
                &[
                    ("VIRTUAL SERVER", "/virtual_server"),
                    ("TOKEN", "/token"),
                    ("NAME", "/token_name"),
                    ("CALLS", "/calls"),
                    ("ERRORS", "/errors"),
                    ("DENIED", "/denied"),
                    ("P50 MS", "/p50_ms"),
                    ("P95 MS", "/p95_ms"),
                    ("P99 MS", "/p99_ms"),
                    ("LAST SEEN", "/last_seen"),
                ],
            );
            (v, t)
        }
        UsageCmd::Unused { since } => {
            let v = c.get("/v1/usage/unused", &[("since", since)]).await?;
            let list = |key: &str| v[key].as_array().cloned().unwrap_or_default();
            let not_exposed: Vec<Vec<String>> = list("not_exposed")
                .iter()
                .map(|t| {
                    vec![
                        s(t, "/mcp_server"),
                        s(t, "/tool"),
                        if t["enabled"] == json!(true) {
                            "enabled".into()
                        } else {
                            "disabled".into()
                        },
                        truncate(&s(t, "/description"), 60),
                    ]
                })
                .collect();
            let dups: Vec<Vec<String>> = list("possible_duplicates")
                .iter()
                .map(|g| {
                    let tools: Vec<String> = g["tools"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| format!("{}/{}", s(t, "/mcp_server"), s(t, "/tool")))
                        .collect();
                    vec![s(g, "/reason"), tools.join(", ")]
                })
                .collect();
            let mut t = format!("Exposed but not called since {}:\n", s(&v, "/since"));
            t.push_str(&columns_table(
                &v["exposed_unused"],
                &[
                    ("VIRTUAL SERVER", "/virtual_server"),
                    ("MCP SERVER", "/mcp_server"),
                    ("TOOL", "/tool"),
                    ("EXPOSED AS", "/exposed_as"),
                    ("LAST CALLED", "/last_called"),
                ],
            ));
            t.push_str("\nIn no virtual server:\n");
            t.push_str(&table(
                &["MCP SERVER", "TOOL", "STATE", "DESCRIPTION"],
                &not_exposed,
            ));
            t.push_str("\nPossible duplicates:\n");
            t.push_str(&table(&["WHY", "TOOLS"], &dups));
            (v, t)
        }
    };
    emit(opts, out);
    Ok(())
}

fn emit(opts: &ClientOpts, (json, text): (Value, String)) {
    if opts.json {
        print_json(&json);
    } else {
        print!("{text}");
    }
}

/// Percent-encode a path segment.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn enc_escapes() {
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
