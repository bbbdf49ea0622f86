//! The input of the resource builders: what the control plane knows, and how the gateway is run.
//!
//! [`GatewayModel`] changes with the catalog (policy snapshot plus the upstream MCP servers);
//! [`GatewaySettings`] is fixed for the life of a control-plane process (ports, the wasm file,
//! timeouts). Upstream URLs are parsed here into [`UpstreamTarget`], so every later step works on
//! a value that is known to be valid.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The system CA bundle on Debian, Ubuntu and Alpine (and Envoy's official images).
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Everything that changes when the catalog changes.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayModel {
    /// The policy the filter enforces (sent to Envoy through ECDS as the plugin configuration).
    pub policy: toolmesh_proto::PolicySnapshot,
    /// One entry per upstream MCP server: one Envoy cluster and one route each.
    pub upstreams: Vec<UpstreamEndpoint>,
}

/// One upstream MCP server as Envoy reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamEndpoint {
    /// The MCP server's catalog name (used in logs and errors).
    pub mcp_server: String,
    /// The Envoy cluster name; the filter selects it with the `x-toolmesh-cluster` header.
    pub cluster: String,
    /// The MCP endpoint, `http://host[:port]/path` or `https://host[:port]/path`.
    pub url: String,
    /// Headers Envoy sets on every request to this upstream (the credentials registered in the
    /// catalog, e.g. `Authorization`), replacing any the client sent: by an upstream filter on
    /// the cluster, so they also reach the filter's own calls to the cluster (member sessions),
    /// which bypass the routes.
    pub request_headers: Vec<(String, String)>,
}

/// Where Envoy writes the MCP listener's access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// One JSON object per request on Envoy's standard output (see
    /// [`crate::resources::ACCESS_LOG_FORMAT`]).
    #[default]
    Stdout,
}

impl std::str::FromStr for AccessLog {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "stdout" => Ok(Self::Stdout),
            _ => Err(format!("{s:?}: expected off or stdout")),
        }
    }
}

/// How the gateway is run: fixed for the life of an [`crate::XdsServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Address the MCP listener binds (default `127.0.0.1`).
    pub listener_address: String,
    /// Port of the MCP listener (default 8080).
    pub listener_port: u16,
    /// Path of the filter's `.wasm` file, as Envoy sees it (Envoy reads it, not the control plane).
    pub wasm_path: PathBuf,
    /// Close a stream that has seen no bytes in either direction for this long (default 10 min).
    /// MCP's GET notification stream can be quiet for a long time; a route timeout would cut it.
    pub stream_idle_timeout: Duration,
    /// Envoy's per-connection buffer limit (default 4 MiB). The effective limit is never below
    /// the policy's `limits.max_body_bytes`, so the filter, not Envoy, answers oversize bodies.
    pub max_request_bytes: u32,
    /// Timeout for opening a connection to an upstream (default 5 s).
    pub upstream_connect_timeout: Duration,
    /// CA bundle (PEM, as Envoy sees it) that verifies `https` upstreams (default: the
    /// Debian/Ubuntu/Alpine system bundle `/etc/ssl/certs/ca-certificates.crt`). Envoy refuses a
    /// TLS cluster that checks the certificate's name without a trusted CA, and reads this file
    /// when the cluster is created, so it must exist wherever an https upstream is configured.
    pub upstream_ca_file: PathBuf,
    /// The MCP listener's access log (default: JSON lines on Envoy's stdout).
    pub access_log: AccessLog,
}

impl GatewaySettings {
    /// The defaults with the given wasm file.
    pub fn new(wasm_path: impl Into<PathBuf>) -> Self {
        Self {
            wasm_path: wasm_path.into(),
            ..Self::default()
        }
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listener_address: "127.0.0.1".into(),
            listener_port: 8080,
            wasm_path: PathBuf::from("toolmesh_filter.wasm"),
            stream_idle_timeout: Duration::from_secs(600),
            max_request_bytes: 4 * 1024 * 1024,
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_ca_file: PathBuf::from(DEFAULT_CA_FILE),
            access_log: AccessLog::default(),
        }
    }
}

/// Why an upstream URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `scheme://...`.
    #[error("not an absolute URL (expected http://host[:port]/path)")]
    NotAbsolute,
    /// A scheme other than `http` or `https`.
    #[error("unsupported scheme {0:?} (only http and https)")]
    UnsupportedScheme(String),
    /// `user:password@host` is not supported (credentials belong in the catalog, not the URL).
    #[error("credentials in the URL are not supported")]
    Userinfo,
    /// The host is empty or not a valid DNS name or IP address.
    #[error("invalid host {0:?}")]
    BadHost(String),
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?}")]
    BadPort(String),
}

/// Where an upstream lives, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// `true` for `https`.
    pub tls: bool,
    /// The host as written (without IPv6 brackets).
    pub host: Host,
    /// The port (explicit, or 80/443 from the scheme).
    pub port: u16,
    /// Whether the URL named the port explicitly.
    pub explicit_port: bool,
    /// The path (and query) of the MCP endpoint; `/` when the URL has none.
    pub path: String,
}

/// An upstream host: an IP literal (static cluster) or a DNS name (DNS cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, lower-cased.
    Dns(String),
}

impl Host {
    /// The host as an address string (no brackets).
    pub fn address(&self) -> String {
        match self {
            Host::Ip(ip) => ip.to_string(),
            Host::Dns(name) => name.clone(),
        }
    }
}

impl UpstreamTarget {
    /// Parse `http(s)://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(UrlError::NotAbsolute)?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            other => return Err(UrlError::UnsupportedScheme(other.to_string())),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(UrlError::Userinfo);
        }
        let (host_part, port_part) = split_host_port(authority)?;
        let host = parse_host(host_part)?;
        let (port, explicit_port) = match port_part {
            None => (if tls { 443 } else { 80 }, false),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => (n, true),
                _ => return Err(UrlError::BadPort(p.to_string())),
            },
        };
        // Drop a fragment: it never goes on the wire.
        let tail = tail.split('#').next().unwrap_or_default();
        let path = if tail.is_empty() {
            "/".to_string()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_string()
        };
        Ok(Self {
            tls,
            host,
            port,
            explicit_port,
            path,
        })
    }

    /// The value for the upstream `Host` header: `host` or `host:port` when the port is not the
    /// scheme's default (IPv6 in brackets).
    pub fn host_header(&self) -> String {
        let host = match &self.host {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            other => other.address(),
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), UrlError> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| UrlError::BadHost(authority.to_string()))?;
        match after {
            "" => Ok((host, None)),
            p => match p.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(UrlError::BadHost(authority.to_string())),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => Ok((host, Some(port))),
            None => Ok((authority, None)),
        }
    }
}

fn parse_host(host: &str) -> Result<Host, UrlError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    // An all-numeric last label is a malformed IPv4 address, not a name.
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if name.is_empty() || name.len() > 253 || numeric_tld || !name.split('.').all(label_ok) {
        return Err(UrlError::BadHost(host.to_string()));
    }
    Ok(Host::Dns(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_upstreams_use() {
        let t = UpstreamTarget::parse("http://127.0.0.1:9000/mcp").unwrap();
        assert_eq!(
            (t.tls, t.host.clone(), t.port, t.path.as_str()),
            (false, Host::Ip("127.0.0.1".parse().unwrap()), 9000, "/mcp")
        );
        assert_eq!(t.host_header(), "127.0.0.1:9000");

        let t = UpstreamTarget::parse("HTTPS://Tools.Example.com/v1/mcp?x=1#frag").unwrap();
        assert!(t.tls);
        assert_eq!(t.host, Host::Dns("tools.example.com".into()));
        assert_eq!((t.port, t.explicit_port), (443, false));
        assert_eq!(t.path, "/v1/mcp?x=1");
        assert_eq!(t.host_header(), "tools.example.com");

        let t = UpstreamTarget::parse("http://[::1]:8000").unwrap();
        assert_eq!(t.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(t.path, "/");
        assert_eq!(t.host_header(), "[::1]:8000");

        let t = UpstreamTarget::parse("http://localhost:80/mcp").unwrap();
        assert_eq!(t.host_header(), "localhost");
    }

    #[test]
    fn refuses_what_envoy_could_not_reach() {
        let cases = [
            ("127.0.0.1:9000/mcp", UrlError::NotAbsolute),
            ("ftp://host/mcp", UrlError::UnsupportedScheme("ftp".into())),
            ("stdio://x", UrlError::UnsupportedScheme("stdio".into())),
            ("http://u:p@host/mcp", UrlError::Userinfo),
            ("http:///mcp", UrlError::BadHost(String::new())),
            ("http://bad host/mcp", UrlError::BadHost("bad host".into())),
            ("http://host_x/mcp", UrlError::BadHost("host_x".into())),
            ("http://1.2.3.999/", UrlError::BadHost("1.2.3.999".into())),
            ("http://host:0/mcp", UrlError::BadPort("0".into())),
            ("http://host:70000/mcp", UrlError::BadPort("70000".into())),
            ("http://host:+80/mcp", UrlError::BadPort("+80".into())),
            ("http://[::1/mcp", UrlError::BadHost("[::1".into())),
        ];
        for (url, want) in cases {
            assert_eq!(UpstreamTarget::parse(url), Err(want), "{url}");
        }
    }
}
