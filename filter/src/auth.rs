//! Token checks: who may use a virtual server.
//!
//! Envoy's `jwt_authn` runs first and only verifies (`allow_missing_or_failed`): a token whose
//! signature, issuer, audience and expiry check out leaves its payload in the request's dynamic
//! metadata; any other token (or none) leaves the reason it failed. The shell reads those few
//! values (`TokenFacts`) and this module decides, so every rule is tested natively:
//!
//! - the policy has no `auth` section: no checks (a deployment without `jwt_authn`);
//! - the virtual server is anonymous: allowed, token or not;
//! - no verified token: **401** with `WWW-Authenticate: Bearer resource_metadata="…"` (the MCP
//!   authorization spec, RFC 9728) and a message saying what was wrong (no token, expired at
//!   when, bad signature, Envoy's reason otherwise);
//! - a verified token that is revoked: 401 (`error="invalid_token"`);
//! - a verified token that does not list the virtual server (nor `*`), or whose source networks
//!   do not contain the client's address: **403** (`error="insufficient_scope"`).
//!
//! The filter trusts only dynamic metadata, which only Envoy filters write: no client header
//! can impersonate a verified payload. The `Authorization` header is read only to say when a
//! token that failed verification expired, never to decide.

use std::collections::HashSet;
use std::net::IpAddr;

use toolmesh_proto::PolicySnapshot;

use crate::stats::Reason;

/// The JSON-RPC error code of token refusals (in the implementation-defined server range; MCP
/// defines none for authorization, which is an HTTP matter).
pub const AUTH_ERROR_CODE: i64 = -32001;

/// The well-known path prefix of OAuth protected resource metadata (RFC 9728).
pub const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// The token-check part of a compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledAuth {
    public_url: String,
    anonymous: HashSet<String>,
    revoked: HashSet<String>,
    /// (virtual server, token id): tokens issued before that virtual server was created.
    stale: HashSet<(String, String)>,
}

/// What Envoy's `jwt_authn` left for this request, and the client's address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFacts {
    /// The verified token's `jti` (present only when a token verified).
    pub jti: Option<String>,
    /// The verified token's `toolmesh_vs` claim.
    pub virtual_servers: Option<String>,
    /// The verified token's `toolmesh_cidrs` claim.
    pub source_cidrs: Option<String>,
    /// Why verification failed (`jwt_authn`'s message, e.g. `Jwt is expired`).
    pub failure: Option<String>,
    /// The `Authorization` header as sent (only for the message about an expired token).
    pub authorization: Option<String>,
    /// The client's address (`ip:port`, Envoy's `source.address`).
    pub source: Option<String>,
}

/// A refusal: status, reason, message and the `WWW-Authenticate` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401 or 403.
    pub status: u16,
    /// Stat reason.
    pub reason: Reason,
    /// A sentence a person can act on.
    pub message: String,
    /// The `WWW-Authenticate` header value.
    pub www_authenticate: String,
}

impl CompiledAuth {
    /// The token checks of `snapshot`, if it has any.
    pub fn compile(snapshot: &PolicySnapshot) -> Option<Self> {
        let auth = snapshot.auth.as_ref()?;
        Some(Self {
            public_url: auth.public_url.trim_end_matches('/').to_owned(),
            anonymous: auth.anonymous_virtual_servers.iter().cloned().collect(),
            revoked: snapshot.revoked_token_ids.iter().cloned().collect(),
            stale: snapshot
                .virtual_servers
                .iter()
                .flat_map(|v| v.stale_tokens.iter().map(|t| (v.name.clone(), t.clone())))
                .collect(),
        })
    }

    /// Does virtual server `vs` need a token?
    pub fn requires_token(&self, vs: &str) -> bool {
        !self.anonymous.contains(vs)
    }

    /// The resource metadata URL for `vs` (what `WWW-Authenticate` points at).
    pub fn metadata_url(&self, vs: &str) -> String {
        format!("{}{METADATA_PREFIX}/servers/{vs}/mcp", self.public_url)
    }

    /// Decide on a request for virtual server `vs`; `now_s` is the Unix time in seconds.
    pub fn check(&self, vs: &str, facts: &TokenFacts, now_s: u64) -> Option<Refusal> {
        if !self.requires_token(vs) {
            return None;
        }
        let Some(jti) = &facts.jti else {
            return Some(self.unauthenticated(vs, facts, now_s));
        };
        if self.revoked.contains(jti) {
            return Some(Refusal {
                status: 401,
                reason: Reason::TokenRevoked,
                message: format!(
                    "The bearer token '{jti}' was revoked; ask the gateway's administrator for a new token"
                ),
                www_authenticate: self.challenge(vs, Some("invalid_token")),
            });
        }
        let scope = facts.virtual_servers.as_deref().unwrap_or_default();
        if !self.stale.is_empty() && self.stale.contains(&(vs.to_owned(), jti.clone())) {
            return Some(Refusal {
                status: 403,
                reason: Reason::TokenScope,
                message: format!(
                    "This token was issued for an earlier virtual server named '{vs}' (deleted \
                     since); it does not open the current one: ask for a new token"
                ),
                www_authenticate: self.challenge(vs, Some("insufficient_scope")),
            });
        }
        if !scope.split_whitespace().any(|s| s == vs || s == "*") {
            let opens: Vec<&str> = scope.split_whitespace().collect();
            return Some(Refusal {
                status: 403,
                reason: Reason::TokenScope,
                message: format!(
                    "This token does not open virtual server '{vs}' (it opens: {})",
                    if opens.is_empty() {
                        "none".to_owned()
                    } else {
                        opens.join(", ")
                    }
                ),
                www_authenticate: self.challenge(vs, Some("insufficient_scope")),
            });
        }
        if let Some(cidrs) = facts
            .source_cidrs
            .as_deref()
            .filter(|c| !c.trim().is_empty())
        {
            let ip = facts.source.as_deref().and_then(source_ip);
            let inside =
                ip.is_some_and(|ip| cidrs.split_whitespace().any(|c| cidr_contains(c, ip)));
            if !inside {
                let from = ip.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
                return Some(Refusal {
                    status: 403,
                    reason: Reason::TokenSource,
                    message: format!(
                        "This token cannot be used from {from} (allowed networks: {})",
                        cidrs.split_whitespace().collect::<Vec<_>>().join(", ")
                    ),
                    www_authenticate: self.challenge(vs, Some("insufficient_scope")),
                });
            }
        }
        None
    }

    fn challenge(&self, vs: &str, error: Option<&str>) -> String {
        let mut out = format!("Bearer resource_metadata=\"{}\"", self.metadata_url(vs));
        if let Some(e) = error {
            out.push_str(&format!(", error=\"{e}\""));
        }
        out
    }

    fn unauthenticated(&self, vs: &str, facts: &TokenFacts, now_s: u64) -> Refusal {
        let failure = facts.failure.as_deref().unwrap_or("Jwt is missing");
        let presented = bearer(facts.authorization.as_deref()).is_some();
        let message = if !presented || failure.contains("missing") {
            format!(
                "Authentication required: no bearer token. Send 'Authorization: Bearer <token>' with a toolmesh token for virtual server '{vs}'"
            )
        } else if failure.contains("expired") {
            match bearer(facts.authorization.as_deref()).and_then(unverified_exp) {
                Some(exp) => format!(
                    "The bearer token expired at {} ({} s ago); ask for a new token",
                    rfc3339(exp),
                    now_s.saturating_sub(exp)
                ),
                None => "The bearer token has expired; ask for a new token".to_owned(),
            }
        } else if failure.contains("verification fail") || failure.contains("doesn't have key") {
            "The bearer token's signature is invalid: it was not signed by this gateway's keys, or it was altered".to_owned()
        } else if failure.contains("not yet valid") {
            "The bearer token is not valid yet (nbf in the future)".to_owned()
        } else {
            format!("The bearer token is not valid: {failure}")
        };
        Refusal {
            status: 401,
            reason: Reason::Unauthenticated,
            message,
            // RFC 6750 3.1: no error code when the request had no token.
            www_authenticate: self.challenge(vs, presented.then_some("invalid_token")),
        }
    }

    /// The protected resource metadata document (RFC 9728) for a GET of `path`, or `None` when
    /// `path` is not one: `/.well-known/oauth-protected-resource/servers/{vs}/mcp` (a known
    /// virtual server) or the bare prefix (the gateway as a whole).
    pub fn metadata_document(
        &self,
        path: &str,
        known_vs: impl Fn(&str) -> bool,
    ) -> Option<Vec<u8>> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let rest = path.strip_prefix(METADATA_PREFIX)?;
        let resource = if rest.is_empty() || rest == "/" {
            self.public_url.clone()
        } else {
            let vs = rest.strip_prefix("/servers/")?.strip_suffix("/mcp")?;
            if !toolmesh_proto::is_slug(vs) || !known_vs(vs) {
                return None;
            }
            format!("{}/servers/{vs}/mcp", self.public_url)
        };
        let doc = serde_json::json!({
            "resource": resource,
            "bearer_methods_supported": ["header"],
            "resource_name": "toolmesh MCP gateway",
        });
        Some(doc.to_string().into_bytes())
    }
}

fn bearer(authorization: Option<&str>) -> Option<&str> {
    let v = authorization?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The `exp` of a JWT, without verifying it (only to word a message).
fn unverified_exp(jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = b64url_decode(payload)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_u64()
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap_or(0));
        }
    }
    Some(out)
}

/// `2026-11-25T21:30:00Z` for a Unix time in seconds.
pub fn rfc3339(unix_s: u64) -> String {
    let days = i64::try_from(unix_s / 86_400).unwrap_or(0);
    let secs = unix_s % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The IP of Envoy's `source.address` (`127.0.0.1:5000`, `[::1]:5000`, or a bare address).
pub fn source_ip(addr: &str) -> Option<IpAddr> {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    addr.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Is `ip` inside `cidr` (`10.0.0.0/8`, `2001:db8::/32`, or one address)?
pub fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let (net, len) = match cidr.split_once('/') {
        Some((n, l)) => match l.parse::<u32>() {
            Ok(l) => (n, Some(l)),
            Err(_) => return false,
        },
        None => (cidr, None),
    };
    let Ok(net) = net.parse::<IpAddr>() else {
        return false;
    };
    match (net.to_canonical(), ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let len = len.unwrap_or(32);
            if len > 32 {
                return false;
            }
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let len = len.unwrap_or(128);
            if len > 128 {
                return false;
            }
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> CompiledAuth {
        let mut s = PolicySnapshot::empty("1");
        s.revoked_token_ids = vec!["tok_revoked".into()];
        s.auth = Some(toolmesh_proto::Auth {
            jwks: "{}".into(),
            public_url: "https://mcp.example.com/".into(),
            anonymous_virtual_servers: vec!["open".into()],
        });
        CompiledAuth::compile(&s).unwrap()
    }

    fn verified(jti: &str, vs: &str, cidrs: Option<&str>) -> TokenFacts {
        TokenFacts {
            jti: Some(jti.into()),
            virtual_servers: Some(vs.into()),
            source_cidrs: cidrs.map(str::to_owned),
            source: Some("127.0.0.1:40000".into()),
            ..TokenFacts::default()
        }
    }

    #[test]
    fn no_auth_section_means_no_checks() {
        assert_eq!(CompiledAuth::compile(&PolicySnapshot::empty("1")), None);
    }

    #[test]
    fn verified_tokens_open_their_virtual_servers() {
        let a = auth();
        assert_eq!(
            a.check("team-a", &verified("t", "team-a team-b", None), 0),
            None
        );
        assert_eq!(
            a.check("team-b", &verified("t", "team-a team-b", None), 0),
            None
        );
        assert_eq!(a.check("anything", &verified("t", "*", None), 0), None);
        let r = a
            .check("team-c", &verified("t", "team-a team-b", None), 0)
            .unwrap();
        assert_eq!((r.status, r.reason), (403, Reason::TokenScope));
        assert_eq!(
            r.message,
            "This token does not open virtual server 'team-c' (it opens: team-a, team-b)"
        );
        assert_eq!(
            r.www_authenticate,
            "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/servers/team-c/mcp\", error=\"insufficient_scope\""
        );
        // A name is matched whole, never as a prefix.
        assert!(a.check("team", &verified("t", "team-a", None), 0).is_some());
    }

    #[test]
    fn revoked_tokens_are_refused() {
        let r = auth()
            .check("team-a", &verified("tok_revoked", "*", None), 0)
            .unwrap();
        assert_eq!((r.status, r.reason), (401, Reason::TokenRevoked));
        assert!(r.message.contains("tok_revoked") && r.message.contains("revoked"));
        assert!(r.www_authenticate.contains("error=\"invalid_token\""));
    }

    #[test]
    fn tokens_for_an_earlier_virtual_server_of_the_same_name_are_refused() {
        let mut s = PolicySnapshot::empty("1");
        s.auth = Some(toolmesh_proto::Auth {
            jwks: "{}".into(),
            public_url: "https://mcp.example.com".into(),
            anonymous_virtual_servers: vec![],
        });
        s.virtual_servers.push(toolmesh_proto::VirtualServer {
            name: "team-a".into(),
            members: vec![],
            callers: vec![],
            stale_tokens: vec!["tok_old".into()],
        });
        let a = CompiledAuth::compile(&s).unwrap();
        let r = a
            .check("team-a", &verified("tok_old", "team-a team-b", None), 0)
            .unwrap();
        assert_eq!((r.status, r.reason), (403, Reason::TokenScope));
        assert!(
            r.message.contains("earlier virtual server named 'team-a'"),
            "{}",
            r.message
        );
        // The same token still opens its other virtual server; a newer token opens team-a.
        assert_eq!(
            a.check("team-b", &verified("tok_old", "team-a team-b", None), 0),
            None
        );
        assert_eq!(
            a.check("team-a", &verified("tok_new", "team-a", None), 0),
            None
        );
    }

    #[test]
    fn source_networks() {
        let a = auth();
        let ok = verified("t", "*", Some("10.0.0.0/8 127.0.0.0/8"));
        assert_eq!(a.check("x", &ok, 0), None);
        let far = verified("t", "*", Some("10.0.0.0/8"));
        let r = a.check("x", &far, 0).unwrap();
        assert_eq!((r.status, r.reason), (403, Reason::TokenSource));
        assert_eq!(
            r.message,
            "This token cannot be used from 127.0.0.1 (allowed networks: 10.0.0.0/8)"
        );
        let mut unknown = far.clone();
        unknown.source = None;
        assert!(a.check("x", &unknown, 0).is_some(), "fail closed");
        let mut v6 = verified("t", "*", Some("2001:db8::/32"));
        v6.source = Some("[2001:db8::7]:443".into());
        assert_eq!(a.check("x", &v6, 0), None);
        v6.source = Some("[2001:db9::7]:443".into());
        assert!(a.check("x", &v6, 0).is_some());
        // An IPv4-mapped IPv6 client matches IPv4 networks.
        let mut mapped = verified("t", "*", Some("127.0.0.1/32"));
        mapped.source = Some("[::ffff:127.0.0.1]:1".into());
        assert_eq!(a.check("x", &mapped, 0), None);
    }

    #[test]
    fn cidr_matching() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(cidr_contains("10.0.0.0/8", ip("10.200.1.1")));
        assert!(!cidr_contains("10.0.0.0/8", ip("11.0.0.1")));
        assert!(cidr_contains("0.0.0.0/0", ip("1.2.3.4")));
        assert!(cidr_contains("1.2.3.4", ip("1.2.3.4")));
        assert!(!cidr_contains("1.2.3.4/33", ip("1.2.3.4")));
        assert!(!cidr_contains("10.0.0.0/8", ip("::1")));
        assert!(cidr_contains("::1/128", ip("::1")));
        assert!(!cidr_contains("garbage", ip("::1")));
    }

    #[test]
    fn unauthenticated_messages_say_what_is_wrong() {
        let a = auth();
        let none = a.check("team-a", &TokenFacts::default(), 0).unwrap();
        assert_eq!((none.status, none.reason), (401, Reason::Unauthenticated));
        assert!(none.message.contains("no bearer token"), "{}", none.message);
        assert_eq!(
            none.www_authenticate,
            "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/servers/team-a/mcp\""
        );
        // An expired token: the time comes from its (unverified) payload.
        let payload = "eyJleHAiOjE3OTU2NDAyNjZ9"; // {"exp":1795640266}
        let expired = TokenFacts {
            failure: Some("Jwt is expired".into()),
            authorization: Some(format!("Bearer e30.{payload}.c2ln")),
            ..TokenFacts::default()
        };
        let r = a.check("team-a", &expired, 1_795_640_300).unwrap();
        assert_eq!(
            r.message,
            "The bearer token expired at 2026-11-25T20:57:46Z (34 s ago); ask for a new token"
        );
        assert!(r.www_authenticate.ends_with(", error=\"invalid_token\""));
        let bad_sig = TokenFacts {
            failure: Some("Jwt verification fails".into()),
            authorization: Some("Bearer a.b.c".into()),
            ..TokenFacts::default()
        };
        assert!(
            a.check("x", &bad_sig, 0)
                .unwrap()
                .message
                .contains("signature is invalid")
        );
        let other = TokenFacts {
            failure: Some("Jwt header is an invalid JSON".into()),
            authorization: Some("Bearer abc".into()),
            ..TokenFacts::default()
        };
        assert_eq!(
            a.check("x", &other, 0).unwrap().message,
            "The bearer token is not valid: Jwt header is an invalid JSON"
        );
    }

    #[test]
    fn anonymous_virtual_servers_need_no_token() {
        let a = auth();
        assert_eq!(a.check("open", &TokenFacts::default(), 0), None);
        assert!(!a.requires_token("open"));
        assert!(a.requires_token("team-a"));
    }

    #[test]
    fn resource_metadata_documents() {
        let a = auth();
        let known = |vs: &str| vs == "team-a";
        let doc: serde_json::Value = serde_json::from_slice(
            &a.metadata_document(
                "/.well-known/oauth-protected-resource/servers/team-a/mcp",
                known,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            doc["resource"],
            "https://mcp.example.com/servers/team-a/mcp"
        );
        assert_eq!(
            doc["bearer_methods_supported"],
            serde_json::json!(["header"])
        );
        let root: serde_json::Value = serde_json::from_slice(
            &a.metadata_document("/.well-known/oauth-protected-resource", known)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(root["resource"], "https://mcp.example.com");
        for bad in [
            "/.well-known/oauth-protected-resource/servers/nope/mcp",
            "/.well-known/oauth-protected-resource/servers/team-a/mcp/x",
            "/.well-known/oauth-protected-resource/x",
            "/.well-known/other",
        ] {
            assert_eq!(a.metadata_document(bad, known), None, "{bad}");
        }
    }

    fn flow_policy(with_auth: bool) -> std::rc::Rc<crate::policy::CompiledPolicy> {
        let mut s: PolicySnapshot = serde_json::from_value(serde_json::json!({
            "schema_version": 3, "catalog_version": "1",
            "virtual_servers": [{"name": "team-a", "members": [{"mcp_server": "up", "cluster": "mcp_up",
                "path": "/mcp", "authority": "up:80", "tools": [{"name": "echo", "upstream_name": "echo"}]}]}]
        }))
        .unwrap();
        if with_auth {
            s.auth = auth_snapshot_auth();
        }
        std::rc::Rc::new(crate::policy::CompiledPolicy::compile(&s))
    }

    fn auth_snapshot_auth() -> Option<toolmesh_proto::Auth> {
        Some(toolmesh_proto::Auth {
            jwks: "{}".into(),
            public_url: "http://gw".into(),
            anonymous_virtual_servers: vec![],
        })
    }

    fn post_head(path: &str) -> crate::decide::RequestHead<'_> {
        crate::decide::RequestHead {
            method: "POST",
            path,
            content_type: Some("application/json"),
            ..Default::default()
        }
    }

    #[test]
    fn the_flow_refuses_with_the_request_id_and_the_challenge() {
        use crate::flow::{Flow, RequestAction};
        let mut flow = Flow::new(flow_policy(true));
        let vs = flow.token_check_for("/servers/team-a/mcp").unwrap();
        assert_eq!(vs, "team-a");
        flow.check_token(vs, &TokenFacts::default(), 0);
        let head = post_head("/servers/team-a/mcp");
        assert_eq!(flow.on_request_headers(&head, 0), RequestAction::ReadBody);
        assert!(flow.wants_request_body());
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}"#;
        let RequestAction::Deny(r) = flow.on_request_body(body, 0) else {
            panic!("not refused")
        };
        assert_eq!(r.status, 401);
        assert_eq!(
            r.www_authenticate.as_deref(),
            Some(
                "Bearer resource_metadata=\"http://gw/.well-known/oauth-protected-resource/servers/team-a/mcp\""
            )
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], AUTH_ERROR_CODE);
        let stats: Vec<_> = flow.take_stats().into_iter().map(|op| op.key).collect();
        assert_eq!(
            stats,
            [crate::stats::StatKey::VsDenied {
                vs: 0,
                reason: Reason::Unauthenticated
            }]
        );

        // Bodiless GET: refused at once, id null.
        let mut flow = Flow::new(flow_policy(true));
        flow.check_token("team-a", &TokenFacts::default(), 0);
        let head = crate::decide::RequestHead {
            method: "GET",
            path: "/servers/team-a/mcp",
            end_of_stream: true,
            ..Default::default()
        };
        let RequestAction::Deny(r) = flow.on_request_headers(&head, 0) else {
            panic!("not refused")
        };
        assert_eq!(r.status, 401);
        assert!(String::from_utf8_lossy(&r.body).contains(r#""id":null"#));

        // A body over the cap while waiting for the id: refused without it.
        let mut flow = Flow::new(flow_policy(true));
        flow.check_token("team-a", &TokenFacts::default(), 0);
        flow.on_request_headers(&post_head("/servers/team-a/mcp"), 0);
        let r = flow.on_request_body_progress(10 * 1024 * 1024).unwrap();
        assert_eq!(r.status, 401);

        // A verified token for the virtual server: the normal flow.
        let mut flow = Flow::new(flow_policy(true));
        flow.check_token("team-a", &verified("t", "team-a", None), 0);
        assert_eq!(
            flow.on_request_headers(&post_head("/servers/team-a/mcp"), 0),
            RequestAction::ReadBody
        );
        assert!(matches!(
            flow.on_request_body(body, 0),
            RequestAction::Forward(_)
        ));
    }

    #[test]
    fn without_auth_the_flow_checks_nothing() {
        let flow = crate::flow::Flow::new(flow_policy(false));
        assert_eq!(flow.token_check_for("/servers/team-a/mcp"), None);
        assert_eq!(flow.metadata_document("GET", METADATA_PREFIX), None);
        let flow = crate::flow::Flow::new(flow_policy(true));
        assert!(flow.metadata_document("GET", METADATA_PREFIX).is_some());
        assert_eq!(flow.metadata_document("POST", METADATA_PREFIX), None);
        assert_eq!(flow.token_check_for("/other"), None);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_640_266), "2026-11-25T20:57:46Z");
    }
}
