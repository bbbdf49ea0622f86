//! Sealed `Mcp-Session-Id`s: the session is carried by the client, not stored.
//!
//! Why no store: a virtual server federates several upstream MCP servers, each with its own
//! session (its `Mcp-Session-Id` and negotiated protocol version). The filter runs in every
//! Envoy worker of every Envoy replica, and proxy-wasm offers no shared store that outlives a
//! VM or spans replicas (shared data is per process and lost on restart). So the filter writes
//! everything a session is into the id it hands the client, and MACs it: any worker of any
//! replica holding the same keys can open any session, a restart loses nothing, and there is
//! nothing to expire or evict. A client cannot forge or alter a session (it would need the key),
//! and a session names its virtual server and caller, so it cannot be replayed elsewhere.
//!
//! Format (visible ASCII, fit for an HTTP header):
//!
//! ```text
//! <key id>.<base64url payload>.<base64url HMAC-SHA256(secret, "<key id>.<base64url payload>")>
//! ```
//!
//! base64url is without padding. The payload is compact JSON:
//! `{"v":"<virtual server>","c":"<caller>","t":<issued, unix seconds>,"m":[...]}` with one
//! entry per member, by MCP server name: `["srv","-"]` stateless, `["srv","!"]` failed,
//! `["srv","s","<upstream session id>","<protocol version>"]` open.
//!
//! [`seal`] uses the first key of [`toolmesh_proto::Sessions::keys`]; [`open`] accepts any key
//! (rotation: add the new key first, drop the old one later). [`open`] checks the MAC in
//! constant time before it decodes or parses anything.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Decodes key secrets as the snapshot validation accepts them: base64url, trailing bits and
/// padding tolerated (session ids themselves are decoded strictly).
const SECRET_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The longest session id [`open`] reads (and [`seal`] writes).
pub const MAX_SESSION_ID_LEN: usize = 8 * 1024;

/// The keys that seal and open session ids; the first one seals.
///
/// Empty (the default, or a snapshot without usable keys) means sessions cannot be sealed and
/// no session id opens. `Debug` shows key ids only, never secrets.
#[derive(Clone, Default)]
pub struct SessionKeys {
    /// (key id, decoded secret), sealing key first.
    keys: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field(
                "ids",
                &self
                    .keys
                    .iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SessionKeys {
    /// The keys of a snapshot, in order. A key whose id is not 1-16 ASCII letters or digits, or
    /// whose secret is not base64url without padding, is skipped (the snapshot validation
    /// refuses both, so this only guards an unvalidated snapshot).
    pub fn from_proto(s: &toolmesh_proto::Sessions) -> Self {
        let keys = s
            .keys
            .iter()
            .filter(|k| {
                !k.id.is_empty()
                    && k.id.len() <= 16
                    && k.id.bytes().all(|c| c.is_ascii_alphanumeric())
            })
            .filter_map(|k| {
                let secret = SECRET_ENGINE.decode(k.secret.as_bytes()).ok()?;
                (!secret.is_empty()).then(|| (k.id.clone(), secret))
            })
            .collect();
        Self { keys }
    }

    /// True when there is no key: nothing can be sealed or opened.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn mac(secret: &[u8]) -> Option<HmacSha256> {
        // HMAC accepts keys of any length; the error arm is unreachable.
        HmacSha256::new_from_slice(secret).ok()
    }
}

/// One member's session inside a client session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberSession {
    /// The member answered `initialize` without a session id: requests go without one.
    Stateless,
    /// The member could not open its session (timeout, HTTP error, bad answer): its items
    /// answer a JSON-RPC error for the life of this session.
    Failed,
    /// The member's own session.
    Open {
        /// The upstream's `Mcp-Session-Id`.
        session_id: String,
        /// The protocol version the member negotiated (its `MCP-Protocol-Version`).
        protocol_version: String,
    },
}

/// What a session id says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    /// The virtual server the session was opened on.
    pub virtual_server: String,
    /// The caller (the token's `jti`; empty when anonymous or without token checks).
    pub caller: String,
    /// When the session was opened (unix seconds).
    pub issued_s: u64,
    /// Each member's session, by MCP server name, in member order.
    pub members: Vec<(String, MemberSession)>,
}

impl SessionClaims {
    /// The session of the member `mcp_server`, if the session knows it (a member added to the
    /// virtual server after the session opened is not in it).
    pub fn member(&self, mcp_server: &str) -> Option<&MemberSession> {
        self.members
            .iter()
            .find(|(name, _)| name == mcp_server)
            .map(|(_, s)| s)
    }
}

/// The JSON payload, with short keys (it travels in a header on every request).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    v: String,
    c: String,
    t: u64,
    m: Vec<Vec<String>>,
}

const STATELESS: &str = "-";
const FAILED: &str = "!";
const OPEN: &str = "s";

impl Payload {
    fn from_claims(c: &SessionClaims) -> Self {
        let m = c
            .members
            .iter()
            .map(|(name, s)| match s {
                MemberSession::Stateless => vec![name.clone(), STATELESS.into()],
                MemberSession::Failed => vec![name.clone(), FAILED.into()],
                MemberSession::Open {
                    session_id,
                    protocol_version,
                } => vec![
                    name.clone(),
                    OPEN.into(),
                    session_id.clone(),
                    protocol_version.clone(),
                ],
            })
            .collect();
        Self {
            v: c.virtual_server.clone(),
            c: c.caller.clone(),
            t: c.issued_s,
            m,
        }
    }

    fn into_claims(self) -> Option<SessionClaims> {
        let mut members = Vec::with_capacity(self.m.len());
        for entry in self.m {
            let mut it = entry.into_iter();
            let name = it.next()?;
            let state = match (it.next()?.as_str(), it.next(), it.next(), it.next()) {
                (STATELESS, None, None, None) => MemberSession::Stateless,
                (FAILED, None, None, None) => MemberSession::Failed,
                (OPEN, Some(session_id), Some(protocol_version), None) => MemberSession::Open {
                    session_id,
                    protocol_version,
                },
                _ => return None,
            };
            members.push((name, state));
        }
        Some(SessionClaims {
            virtual_server: self.v,
            caller: self.c,
            issued_s: self.t,
            members,
        })
    }
}

/// Seal `claims` with the first key. `None` when there is no key, or when the id would be
/// longer than [`MAX_SESSION_ID_LEN`] (members with enormous upstream session ids): [`open`]
/// would refuse it.
pub fn seal(keys: &SessionKeys, claims: &SessionClaims) -> Option<String> {
    let (id, secret) = keys.keys.first()?;
    let json = serde_json::to_vec(&Payload::from_claims(claims)).ok()?;
    let mut out = String::with_capacity(id.len() + json.len() * 4 / 3 + 48);
    out.push_str(id);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(&json, &mut out);
    let mut mac = SessionKeys::mac(secret)?;
    mac.update(out.as_bytes());
    let tag = mac.finalize().into_bytes();
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut out);
    (out.len() <= MAX_SESSION_ID_LEN).then_some(out)
}

/// Why a session id did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Longer than [`MAX_SESSION_ID_LEN`].
    TooLong,
    /// Not `<key id>.<payload>.<mac>`, bad base64url, or a payload that is not a session.
    Malformed,
    /// Sealed with a key that is not (or no longer) configured.
    UnknownKey,
    /// The MAC does not match: forged or altered.
    BadMac,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLong => "session id is too long",
            Self::Malformed => "session id is malformed",
            Self::UnknownKey => "session id was sealed with an unknown key",
            Self::BadMac => "session id does not verify",
        })
    }
}

/// Verify and read a session id. The MAC is checked (in constant time) before the payload is
/// decoded; a payload that verifies but does not parse is [`OpenError::Malformed`].
pub fn open(keys: &SessionKeys, session_id: &str) -> Result<SessionClaims, OpenError> {
    if session_id.len() > MAX_SESSION_ID_LEN {
        return Err(OpenError::TooLong);
    }
    let mut parts = session_id.split('.');
    let (Some(key_id), Some(payload), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OpenError::Malformed);
    };
    if key_id.is_empty() || payload.is_empty() || tag.is_empty() {
        return Err(OpenError::Malformed);
    }
    let (_, secret) = keys
        .keys
        .iter()
        .find(|(id, _)| id == key_id)
        .ok_or(OpenError::UnknownKey)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag.as_bytes())
        .map_err(|_| OpenError::Malformed)?;
    let signed_len = key_id.len() + 1 + payload.len();
    let signed = session_id.get(..signed_len).ok_or(OpenError::Malformed)?;
    let mut mac = SessionKeys::mac(secret).ok_or(OpenError::BadMac)?;
    mac.update(signed.as_bytes());
    mac.verify_slice(&tag).map_err(|_| OpenError::BadMac)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload.as_bytes())
        .map_err(|_| OpenError::Malformed)?;
    serde_json::from_slice::<Payload>(&json)
        .ok()
        .and_then(Payload::into_claims)
        .ok_or(OpenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use toolmesh_proto::{SessionKey, Sessions};

    fn key(id: &str, byte: u8) -> SessionKey {
        SessionKey {
            id: id.into(),
            secret: URL_SAFE_NO_PAD.encode([byte; 32]),
        }
    }

    fn keys(list: &[(&str, u8)]) -> SessionKeys {
        SessionKeys::from_proto(&Sessions {
            keys: list.iter().map(|(id, b)| key(id, *b)).collect(),
            ..Sessions::default()
        })
    }

    fn claims() -> SessionClaims {
        SessionClaims {
            virtual_server: "demo".into(),
            caller: "tok-123".into(),
            issued_s: 1_767_225_600,
            members: vec![
                (
                    "everything".into(),
                    MemberSession::Open {
                        session_id: "9f1c\"é\u{0}x".into(),
                        protocol_version: "2025-11-25".into(),
                    },
                ),
                ("weather".into(), MemberSession::Stateless),
                ("broken".into(), MemberSession::Failed),
            ],
        }
    }

    fn sealed(k: &SessionKeys) -> String {
        seal(k, &claims()).unwrap_or_else(|| panic!("no seal"))
    }

    #[test]
    fn round_trip_is_visible_ascii() {
        let k = keys(&[("k1", 7)]);
        let id = sealed(&k);
        assert!(id.starts_with("k1."), "{id}");
        assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{id}");
        assert_eq!(id.split('.').count(), 3);
        let got = open(&k, &id).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, claims());
        assert_eq!(got.member("weather"), Some(&MemberSession::Stateless));
        assert_eq!(got.member("broken"), Some(&MemberSession::Failed));
        assert!(matches!(
            got.member("everything"),
            Some(MemberSession::Open { protocol_version, .. }) if protocol_version == "2025-11-25"
        ));
        assert_eq!(got.member("nope"), None);
        // No members, empty caller.
        let empty = SessionClaims {
            virtual_server: "v".into(),
            caller: String::new(),
            issued_s: 0,
            members: vec![],
        };
        let id = seal(&k, &empty).unwrap_or_default();
        assert_eq!(open(&k, &id), Ok(empty));
    }

    #[test]
    fn no_keys_cannot_seal_or_open() {
        let k = SessionKeys::default();
        assert!(k.is_empty());
        assert_eq!(seal(&k, &claims()), None);
        let id = sealed(&keys(&[("k1", 7)]));
        assert_eq!(open(&k, &id), Err(OpenError::UnknownKey));
    }

    #[test]
    fn bad_keys_are_skipped_and_secrets_not_shown() {
        let k = SessionKeys::from_proto(&Sessions {
            keys: vec![
                SessionKey {
                    id: "bad".into(),
                    secret: "not base64!".into(),
                },
                SessionKey {
                    id: "a.b".into(),
                    secret: URL_SAFE_NO_PAD.encode([1u8; 32]),
                },
                key("good", 2),
            ],
            ..Sessions::default()
        });
        assert!(!k.is_empty());
        let id = sealed(&k);
        assert!(id.starts_with("good."), "{id}");
        let dbg = format!("{k:?}");
        assert!(dbg.contains("good") && !dbg.contains(&URL_SAFE_NO_PAD.encode([2u8; 32])));
        // Non-zero trailing bits (43 × 'B') pass the snapshot validation, so they are accepted.
        let k = SessionKeys::from_proto(&Sessions {
            keys: vec![SessionKey {
                id: "b".into(),
                secret: "B".repeat(43),
            }],
            ..Sessions::default()
        });
        assert!(!k.is_empty());
    }

    #[test]
    fn tampering_is_refused() {
        let k = keys(&[("k1", 7), ("k2", 8)]);
        let id = sealed(&k);
        let parts: Vec<&str> = id.split('.').collect();
        let (kid, payload, tag) = (parts[0], parts[1], parts[2]);
        // Another payload (a real one, sealed for another virtual server) under this MAC.
        let mut other = claims();
        other.virtual_server = "admin".into();
        let other_id = seal(&k, &other).unwrap_or_default();
        let other_payload = other_id.split('.').nth(1).unwrap_or_default();
        let flip = |s: &str, i: usize| {
            let mut b = s.as_bytes().to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            String::from_utf8(b).unwrap_or_default()
        };
        let cases = [
            (format!("{kid}.{other_payload}.{tag}"), OpenError::BadMac),
            (
                format!("{kid}.{}.{tag}", flip(payload, 3)),
                OpenError::BadMac,
            ),
            (
                format!("{kid}.{payload}.{}", flip(tag, 0)),
                OpenError::BadMac,
            ),
            (
                format!("{kid}.{payload}.{}", &tag[..tag.len() - 3]),
                OpenError::BadMac,
            ),
            (format!("k2.{payload}.{tag}"), OpenError::BadMac),
            (format!("k9.{payload}.{tag}"), OpenError::UnknownKey),
            (format!("{kid}.{payload}.{tag}!"), OpenError::Malformed),
            (format!("{kid}.{payload}.{tag}.x"), OpenError::Malformed),
            (format!("{kid}.{payload}"), OpenError::Malformed),
            (format!("{kid}..{tag}"), OpenError::Malformed),
        ];
        for (input, want) in cases {
            assert_eq!(open(&k, &input), Err(want), "{input}");
        }
        assert!(open(&k, &id).is_ok());
    }

    #[test]
    fn a_verified_payload_that_is_not_a_session_is_malformed() {
        let k = keys(&[("k1", 7)]);
        let forge = |json: &str| {
            let mut s = format!("k1.{}", URL_SAFE_NO_PAD.encode(json));
            let mut mac = HmacSha256::new_from_slice(&[7u8; 32]).unwrap();
            mac.update(s.as_bytes());
            s.push('.');
            s.push_str(&URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
            s
        };
        for json in [
            "",
            "null",
            "{}",
            r#"{"v":"a","c":"","t":1,"m":[["x"]]}"#,
            r#"{"v":"a","c":"","t":1,"m":[["x","?"]]}"#,
            r#"{"v":"a","c":"","t":1,"m":[["x","-","extra"]]}"#,
            r#"{"v":"a","c":"","t":1,"m":[["x","s","sid"]]}"#,
            r#"{"v":"a","c":"","t":-1,"m":[]}"#,
            r#"{"v":"a","c":"","t":1,"m":[],"z":1}"#,
        ] {
            assert_eq!(open(&k, &forge(json)), Err(OpenError::Malformed), "{json}");
        }
        assert!(
            open(
                &k,
                &forge(r#"{"v":"a","c":"","t":1,"m":[["x","s","sid","v"]]}"#)
            )
            .is_ok()
        );
    }

    #[test]
    fn rotation() {
        let old = keys(&[("old", 1)]);
        let rotated = keys(&[("new", 2), ("old", 1)]);
        let retired = keys(&[("new", 2)]);
        let by_old = sealed(&old);
        assert_eq!(open(&rotated, &by_old), Ok(claims()));
        let by_new = sealed(&rotated);
        assert!(by_new.starts_with("new."), "{by_new}");
        assert_eq!(open(&rotated, &by_new), Ok(claims()));
        assert_eq!(open(&retired, &by_new), Ok(claims()));
        assert_eq!(open(&retired, &by_old), Err(OpenError::UnknownKey));
        // Same id, other secret: the MAC fails.
        let impostor = keys(&[("old", 9)]);
        assert_eq!(open(&impostor, &by_old), Err(OpenError::BadMac));
    }

    #[test]
    fn too_long_ids() {
        let k = keys(&[("k1", 7)]);
        let long = format!("k1.{}.x", "A".repeat(MAX_SESSION_ID_LEN));
        assert_eq!(open(&k, &long), Err(OpenError::TooLong));
        let mut big = claims();
        big.members = vec![(
            "m".into(),
            MemberSession::Open {
                session_id: "x".repeat(MAX_SESSION_ID_LEN),
                protocol_version: "2025-11-25".into(),
            },
        )];
        assert_eq!(seal(&k, &big), None);
    }

    #[test]
    fn garbage_never_panics() {
        let k = keys(&[("k1", 7)]);
        let id = sealed(&k);
        let fixed = [
            "",
            ".",
            "..",
            "...",
            "k1..",
            "k1.é.é",
            "k1.\u{0}.x",
            "k1.AAAA.AAAA",
            "é.a.b",
            "k1.%%%.###",
        ];
        for s in fixed {
            assert!(open(&k, s).is_err(), "{s:?}");
        }
        // Every truncation, and pseudo-random byte mutations of a valid id.
        for i in 0..id.len() {
            assert!(open(&k, &id[..i]).is_err());
        }
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut b = id.as_bytes().to_vec();
            let at = (next() as usize) % b.len();
            b[at] = (next() % 0x60) as u8 + 0x20;
            let s = String::from_utf8_lossy(&b).into_owned();
            if s != id {
                assert!(open(&k, &s).is_err(), "{s}");
            }
        }
    }
}
