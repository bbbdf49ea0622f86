//! Tokens scoped to virtual servers: EdDSA (Ed25519) JWTs signed by the control plane, verified
//! in Envoy.
//!
//! Why JWTs and not opaque tokens: Envoy's `jwt_authn` verifies them locally against a JWKS the
//! control plane pushes, so no request ever waits on the control plane, and a control-plane
//! outage does not lock agents out. What a signature cannot express — revocation before expiry —
//! travels in the policy snapshot (`revoked_token_ids`), which the filter checks on every request.
//!
//! Claims (see the constants in `toolmesh-proto`): `iss`/`aud` `toolmesh`, `sub` the token's name,
//! `jti` its id, `iat`, `exp` when it expires, `toolmesh_vs` the virtual servers it opens
//! (space-separated, or `*`), `toolmesh_cidrs` the source networks it may be used from
//! (space-separated; absent means anywhere). Strings rather than arrays because Envoy hands a
//! string claim to the wasm filter as its plain bytes.
//!
//! Keys: one Ed25519 key is generated on first start; the private half is stored sealed with the
//! operator's secret key (`crypto.rs`, bound to the kid). `POST /v1/keys/rotate` adds a new key
//! that signs from then on. The JWKS holds the active key plus every older key that signed a token
//! that is neither expired nor revoked, so old tokens keep working until they expire and a key
//! whose tokens are all gone leaves the JWKS at the next publish.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::crypto::{CryptoError, SecretKey};
use crate::store::{NewToken, SigningKeyRecord, Store, StoreError, TokenRecord};

/// Tokens whose expiry is older than this are no longer listed as revoked (Envoy refuses them
/// as expired anyway); covers `jwt_authn`'s clock skew allowance with room to spare.
pub const REVOCATION_GRACE: Duration = Duration::from_secs(300);
/// The longest `expires_in` accepted (10 years).
pub const MAX_EXPIRES_IN: u64 = 10 * 365 * 24 * 3600;
/// The scope that opens every virtual server.
pub const ALL_VIRTUAL_SERVERS: &str = "*";

/// The fixed DER prefix of an Ed25519 private key in PKCS#8 v1 (RFC 8410): the 32-byte seed
/// follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why a token could not be issued or a key not made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The store failed (or refused the input, naming the field).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A signing key does not open with the secret key.
    #[error("signing key {kid}: {source}")]
    Key {
        /// The key id.
        kid: String,
        /// Why.
        source: CryptoError,
    },
    /// There is no active signing key (the control plane creates one at startup).
    #[error("no active token signing key; restart the control plane or POST /v1/keys/rotate")]
    NoSigningKey,
    /// Signing failed.
    #[error("signing the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// The payload of a toolmesh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: `toolmesh`.
    pub iss: String,
    /// Audience: `toolmesh`.
    pub aud: String,
    /// The token's name.
    pub sub: String,
    /// The token id.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expiry (Unix seconds), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Virtual servers, space-separated, or `*`.
    pub toolmesh_vs: String,
    /// Source CIDRs, space-separated; absent means any address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolmesh_cidrs: Option<String>,
}

/// What to issue (already validated by the API).
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Who or what holds the token.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Virtual servers, or `["*"]`.
    pub virtual_servers: Vec<String>,
    /// Normalized CIDRs.
    pub source_cidrs: Vec<String>,
    /// Lifetime, if it expires.
    pub expires_in: Option<Duration>,
}

/// The associated data sealing a signing key's private half.
fn key_context(kid: &str) -> Vec<u8> {
    format!("toolmesh/token-signing-key/v1/{kid}").into_bytes()
}

/// Base64url without padding (JWT segments, JWK `x`).
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode base64url without padding (a JWT segment).
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// A fresh Ed25519 key pair: (kid, PKCS#8 DER of the private key, raw public key).
pub fn generate_keypair() -> (String, Vec<u8>, [u8; 32]) {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&seed);
    // The kid names the key by its content (first 12 bytes of the SHA-256 of the public key).
    let kid = b64url(&Sha256::digest(public)[..12]);
    (kid, pkcs8, public)
}

/// A new signing key record, its private half sealed with `secret`.
pub fn new_signing_key(secret: &SecretKey) -> SigningKeyRecord {
    let (kid, pkcs8, public) = generate_keypair();
    SigningKeyRecord {
        private_key_sealed: secret.seal(&key_context(&kid), &pkcs8),
        kid,
        algorithm: "EdDSA".into(),
        public_key: b64url(&public),
        created_at: Utc::now(),
        retired_at: None,
    }
}

/// Create the first signing key unless one is active. Returns whether one was created.
pub async fn ensure_signing_key(store: &Store, secret: &SecretKey) -> Result<bool, TokenError> {
    if store
        .signing_keys()
        .await?
        .iter()
        .any(|k| k.retired_at.is_none())
    {
        return Ok(false);
    }
    Ok(store
        .add_signing_key(&new_signing_key(secret), true)
        .await?)
}

/// Make a new key the active one; older keys keep verifying the tokens they signed.
pub async fn rotate(store: &Store, secret: &SecretKey) -> Result<SigningKeyRecord, TokenError> {
    let key = new_signing_key(secret);
    store.add_signing_key(&key, false).await?;
    Ok(key)
}

/// The JWK (RFC 8037) of a public key.
pub fn jwk(kid: &str, public_key_b64url: &str) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": public_key_b64url,
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    })
}

/// The JWKS: the active key plus older keys that still have live tokens.
pub async fn jwks(store: &Store, now: DateTime<Utc>) -> Result<serde_json::Value, StoreError> {
    let keys = store.signing_keys().await?;
    let grace = chrono::Duration::from_std(REVOCATION_GRACE).unwrap_or_default();
    let in_use = store.keys_in_use(now - grace).await?;
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .filter(|k| k.retired_at.is_none() || in_use.contains(&k.kid))
        .map(|k| jwk(&k.kid, &k.public_key))
        .collect();
    Ok(serde_json::json!({ "keys": keys }))
}

/// What the gateway needs to check tokens: JWKS, anonymous virtual servers, the public URL.
pub async fn auth_policy(
    store: &Store,
    public_url: &str,
) -> Result<toolmesh_proto::Auth, StoreError> {
    Ok(toolmesh_proto::Auth {
        jwks: jwks(store, Utc::now()).await?.to_string(),
        public_url: public_url.trim_end_matches('/').to_string(),
        anonymous_virtual_servers: store.anonymous_virtual_servers().await?,
    })
}

/// The default of `--caller-stats-limit`: callers listed per virtual server.
pub const DEFAULT_CALLER_STATS_LIMIT: u32 = 1000;

/// Which tokens get their own stats on each virtual server (`VirtualServer.callers` in the
/// snapshot; the filter counts `toolmesh.caller.<vs>.<token id>.{calls,errors,denied}` for them
/// and nobody else).
///
/// Why a list rather than every caller: each listed pair costs Envoy three counters per virtual
/// server (and three Prometheus series), so the number of stats must stay bounded by what the
/// control plane decides, not by what clients present. A token is listed on a virtual server it
/// opens (by name or with `*`) while it is neither revoked nor expired, at most `limit` per
/// virtual server: the newest tokens win, older ones beyond the cap are counted only in the
/// tool and virtual-server stats. `limit` 0 lists nobody (per-caller stats off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Callers {
    /// Virtual server name → token ids, oldest first (a new token is appended).
    pub by_virtual_server: std::collections::BTreeMap<String, Vec<String>>,
    /// The earliest expiry of a listed token: the list changes then without any catalog
    /// change, so the publisher compiles again at that time.
    pub next_expiry: Option<DateTime<Utc>>,
}

impl Callers {
    /// The callers listed on `virtual_server` (none if it has none).
    pub fn of(&self, virtual_server: &str) -> Vec<String> {
        self.by_virtual_server
            .get(virtual_server)
            .cloned()
            .unwrap_or_default()
    }
}

/// Pick the callers of each of `virtual_servers` from `live` (tokens neither revoked nor
/// expired, newest first as [`Store::live_tokens`] returns them), at most `limit` each.
pub fn callers(virtual_servers: &[&str], live: &[TokenRecord], limit: usize) -> Callers {
    let mut out = Callers::default();
    for vs in virtual_servers {
        let mut picked: Vec<&TokenRecord> = Vec::new();
        for t in live {
            if picked.len() >= limit {
                break;
            }
            let opens = t
                .token
                .virtual_servers
                .iter()
                .any(|v| v == vs || v == ALL_VIRTUAL_SERVERS);
            // Ids are unique (the tokens table says so).
            if opens && toolmesh_proto::is_caller_id(&t.token.id) {
                picked.push(t);
            }
        }
        for t in &picked {
            if let Some(e) = t.token.expires_at {
                out.next_expiry = Some(out.next_expiry.map_or(e, |n| n.min(e)));
            }
        }
        if !picked.is_empty() {
            out.by_virtual_server.insert(
                (*vs).to_string(),
                picked.iter().rev().map(|t| t.token.id.clone()).collect(),
            );
        }
    }
    out
}

/// Tokens among `live` that name virtual server `vs` explicitly but were issued before it was
/// created at `created_at`: they were meant for an earlier virtual server of that name, deleted
/// since, and must not open this one (`VirtualServer.stale_tokens`). Tokens for `*` are not
/// stale: they open every virtual server, later ones included.
pub fn stale_tokens(vs: &str, created_at: DateTime<Utc>, live: &[TokenRecord]) -> Vec<String> {
    live.iter()
        .filter(|t| {
            // Tokens record their issue time in whole seconds (the JWT's `iat`): a token
            // issued in the same second as the virtual server is given the benefit of the doubt.
            t.token.created_at.timestamp() < created_at.timestamp()
                && t.token.virtual_servers.iter().any(|v| v == vs)
        })
        .map(|t| t.token.id.clone())
        .filter(|id| toolmesh_proto::is_caller_id(id))
        .collect()
}

/// Ids of revoked tokens that may still verify (not long expired).
pub async fn revoked_ids(store: &Store) -> Result<Vec<String>, StoreError> {
    let grace = chrono::Duration::from_std(REVOCATION_GRACE).unwrap_or_default();
    store.revoked_token_ids(Utc::now() - grace).await
}

/// Sign `claims` with an Ed25519 private key (PKCS#8 DER) under `kid`.
pub fn sign(claims: &Claims, kid: &str, pkcs8_der: &[u8]) -> Result<String, TokenError> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_string());
    header.typ = Some("JWT".into());
    Ok(jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_ed_der(pkcs8_der),
    )?)
}

/// A fresh token id (`jti`).
pub fn new_token_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("tok_{}", hex::encode(b))
}

/// Issue a token: store its metadata and return the signed JWT (shown once) and the record.
pub async fn issue(
    store: &Store,
    secret: &SecretKey,
    req: &IssueRequest,
) -> Result<(String, TokenRecord), TokenError> {
    let key = store
        .signing_keys()
        .await?
        .into_iter()
        .rev()
        .find(|k| k.retired_at.is_none())
        .ok_or(TokenError::NoSigningKey)?;
    let pkcs8 = secret
        .open(&key_context(&key.kid), &key.private_key_sealed)
        .map_err(|source| TokenError::Key {
            kid: key.kid.clone(),
            source,
        })?;
    // Whole seconds, so the stored times equal the claims.
    let now = DateTime::<Utc>::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_default();
    let expires_at = req
        .expires_in
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| now + d);
    let token = NewToken {
        id: new_token_id(),
        name: req.name.clone(),
        description: req.description.clone(),
        virtual_servers: req.virtual_servers.clone(),
        source_cidrs: req.source_cidrs.clone(),
        kid: key.kid.clone(),
        created_at: now,
        expires_at,
    };
    let claims = Claims {
        iss: toolmesh_proto::JWT_ISSUER.into(),
        aud: toolmesh_proto::JWT_AUDIENCE.into(),
        sub: token.name.clone(),
        jti: token.id.clone(),
        iat: now.timestamp(),
        exp: expires_at.map(|e| e.timestamp()),
        toolmesh_vs: token.virtual_servers.join(" "),
        toolmesh_cidrs: (!token.source_cidrs.is_empty()).then(|| token.source_cidrs.join(" ")),
    };
    let jwt = sign(&claims, &key.kid, &pkcs8)?;
    let rec = store.create_token(&token).await?;
    Ok((jwt, rec))
}

/// Parse a source restriction: a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address,
/// normalized to its network (`10.1.2.3/8` → `10.0.0.0/8`).
pub fn parse_cidr(s: &str) -> Option<String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Some(net.trunc().to_string());
    }
    s.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ipnet::IpNet::from(ip).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn signed_tokens_verify_with_the_published_key() {
        let (kid, pkcs8, public) = generate_keypair();
        let claims = Claims {
            iss: "toolmesh".into(),
            aud: "toolmesh".into(),
            sub: "agent".into(),
            jti: new_token_id(),
            iat: 1,
            exp: Some(4_000_000_000),
            toolmesh_vs: "a b".into(),
            toolmesh_cidrs: None,
        };
        let jwt = sign(&claims, &kid, &pkcs8).unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        assert_eq!(header.alg, Algorithm::EdDSA);
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["toolmesh"]);
        let key = DecodingKey::from_ed_components(&b64url(&public)).unwrap();
        let got = jsonwebtoken::decode::<Claims>(&jwt, &key, &v).unwrap();
        assert_eq!(got.claims, claims);
        let (_, _, other) = generate_keypair();
        let other = DecodingKey::from_ed_components(&b64url(&other)).unwrap();
        assert!(jsonwebtoken::decode::<Claims>(&jwt, &other, &v).is_err());
    }

    #[test]
    fn private_keys_are_sealed() {
        let secret = SecretKey::generate();
        let k = new_signing_key(&secret);
        let pkcs8 = secret
            .open(&key_context(&k.kid), &k.private_key_sealed)
            .unwrap();
        assert_eq!(&pkcs8[..16], &ED25519_PKCS8_PREFIX);
        assert!(
            secret
                .open(&key_context("other"), &k.private_key_sealed)
                .is_err()
        );
        assert!(!k.private_key_sealed.windows(32).any(|w| w == &pkcs8[16..]));
    }

    fn rec(id: &str, vs: &[&str], expires_at: Option<i64>) -> TokenRecord {
        TokenRecord {
            token: NewToken {
                id: id.into(),
                name: format!("name of {id}"),
                description: String::new(),
                virtual_servers: vs.iter().map(|v| (*v).to_string()).collect(),
                source_cidrs: vec![],
                kid: "k".into(),
                created_at: Utc::now(),
                expires_at: expires_at.and_then(|t| DateTime::from_timestamp(t, 0)),
            },
            revoked_at: None,
        }
    }

    #[test]
    fn callers_are_the_tokens_that_open_each_virtual_server_newest_first_up_to_the_cap() {
        // Newest first, as the store returns live tokens.
        let live = [
            rec("tok_new", &["a"], Some(2_000)),
            rec("tok_all", &["*"], None),
            rec("tok_ab", &["a", "b"], Some(1_000)),
            rec("bad.id", &["a"], None),
            rec("tok_old", &["a"], None),
        ];
        let c = callers(&["a", "b", "c"], &live, 10);
        assert_eq!(c.of("a"), ["tok_old", "tok_ab", "tok_all", "tok_new"]);
        assert_eq!(c.of("b"), ["tok_ab", "tok_all"]);
        assert_eq!(c.of("c"), ["tok_all"]);
        assert_eq!(c.of("unknown"), Vec::<String>::new());
        assert_eq!(c.next_expiry.map(|t| t.timestamp()), Some(1_000));

        // Capped: the newest win, the oldest are left out.
        let c = callers(&["a", "b"], &live, 2);
        assert_eq!(c.of("a"), ["tok_all", "tok_new"]);
        assert_eq!(c.of("b"), ["tok_ab", "tok_all"]);
        assert_eq!(c.next_expiry.map(|t| t.timestamp()), Some(1_000));
        let c = callers(&["a"], &live, 2);
        assert_eq!(c.next_expiry.map(|t| t.timestamp()), Some(2_000));

        // 0: nobody gets per-caller stats.
        assert_eq!(callers(&["a", "b"], &live, 0), Callers::default());
    }

    #[test]
    fn tokens_issued_before_a_virtual_server_was_created_are_stale_there() {
        let created = Utc::now();
        let at = |id: &str, vs: &[&str], secs: i64| {
            let mut r = rec(id, vs, None);
            r.token.created_at = created + chrono::Duration::seconds(secs);
            r
        };
        let live = [
            at("tok_before", &["a", "b"], -60),
            at("tok_after", &["a"], 60),
            at("tok_all_before", &["*"], -60),
            at("tok_other", &["b"], -60),
        ];
        assert_eq!(stale_tokens("a", created, &live), ["tok_before"]);
        // Issued within the same second: not stale (issue times are whole seconds).
        let same_second = [at("tok_same", &["a"], 0)];
        assert!(stale_tokens("a", created, &same_second).is_empty());
        assert!(stale_tokens("c", created, &live).is_empty());
    }

    #[test]
    fn cidrs_normalize() {
        assert_eq!(parse_cidr("10.1.2.3/8").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(parse_cidr("127.0.0.1").as_deref(), Some("127.0.0.1/32"));
        assert_eq!(parse_cidr("::1").as_deref(), Some("::1/128"));
        assert_eq!(
            parse_cidr("2001:db8::1/32").as_deref(),
            Some("2001:db8::/32")
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("nope"), None);
    }
}
