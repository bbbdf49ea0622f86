//! Upstream credentials at rest: sealed with ChaCha20-Poly1305 under the operator's secret key.
//!
//! Headers such as `Authorization: Bearer …` that toolmesh sends to an upstream MCP server are
//! secrets of someone else's system. The catalog stores them only sealed (version byte, random
//! 96-bit nonce, ciphertext+tag), bound to the MCP server's name as associated data so a sealed
//! blob cannot be moved to another server's row. The API never returns them: it shows only the
//! header names. The key comes from `TOOLMESH_SECRET_KEY`, `TOOLMESH_SECRET_KEY_FILE`, or is
//! generated once into `<data dir>/secret.key` (mode 0600).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore as _;

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// Why a key could not be loaded or a blob not opened.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key text is not 32 bytes of hex or base64.
    #[error(
        "{source_name}: the secret key must be 32 bytes written as 64 hex characters or base64"
    )]
    BadKey {
        /// Where the key came from (`TOOLMESH_SECRET_KEY` or the file path).
        source_name: String,
    },
    /// The key file could not be read or written.
    #[error("secret key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A sealed blob did not open: wrong key, or tampered data.
    #[error("sealed data does not open with this secret key (wrong key or tampered data)")]
    Open,
}

/// Where the secret key came from (logged at startup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `TOOLMESH_SECRET_KEY`.
    Env,
    /// An existing file.
    File(PathBuf),
    /// Generated just now into this file.
    Generated(PathBuf),
}

/// The 256-bit key that seals upstream credentials.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// Parse 64 hex characters or base64 (standard or URL-safe) of exactly 32 bytes.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                .ok()
        };
        match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            Some(k) => Ok(Self(k)),
            None => Err(CryptoError::BadKey {
                source_name: source_name.to_string(),
            }),
        }
    }

    /// The hex form (what a generated key file holds).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Load the key: from the variable, else the file, else `<data_dir>/secret.key` (generated
    /// with mode 0600 when missing).
    pub fn load(
        env_value: Option<&str>,
        file: Option<&Path>,
        data_dir: &Path,
    ) -> Result<(Self, KeySource), CryptoError> {
        if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
            return Ok((Self::parse(v, "TOOLMESH_SECRET_KEY")?, KeySource::Env));
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| CryptoError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let key = Self::parse(&text, &path.display().to_string())?;
            return Ok((key, KeySource::File(path.to_path_buf())));
        }
        let path = data_dir.join("secret.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((
                Self::parse(&text, &path.display().to_string())?,
                KeySource::File(path),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                write_private(&path, &format!("{}\n", key.to_hex())).map_err(|source| {
                    CryptoError::Io {
                        path: path.clone(),
                        source,
                    }
                })?;
                Ok((key, KeySource::Generated(path)))
            }
            Err(source) => Err(CryptoError::Io { path, source }),
        }
    }

    /// Seal `plaintext`, bound to `context` (associated data).
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption with a valid key and nonce length cannot fail for in-memory buffers.
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// The key that seals the session ids Envoy's filter gives MCP clients, derived from this
    /// key (SHA-256 over a fixed label and the key), as the snapshot's base64url secret with its
    /// key id. Derived rather than stored: every control-plane replica with the same secret key
    /// publishes the same session key, so sessions survive a control-plane restart and any
    /// Envoy serves any session; rotating the secret key rotates it.
    pub fn session_key(&self) -> toolmesh_proto::SessionKey {
        use sha2::Digest as _;
        let derived = sha2::Sha256::new()
            .chain_update(b"toolmesh/session-seal/v1\0")
            .chain_update(self.0)
            .finalize();
        let id = sha2::Sha256::digest(derived);
        toolmesh_proto::SessionKey {
            id: hex::encode(&id[..4]),
            secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(derived),
        }
    }

    /// Open a blob made by [`SecretKey::seal`] with the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != SEAL_VERSION {
            return Err(CryptoError::Open);
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        cipher
            .decrypt(
                Nonce::from_slice(&sealed[1..1 + NONCE_LEN]),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: context,
                },
            )
            .map_err(|_| CryptoError::Open)
    }
}

/// The associated data for an MCP server's credential headers.
pub fn headers_context(mcp_server: &str) -> Vec<u8> {
    format!("toolmesh/mcp-server-headers/v1/{mcp_server}").into_bytes()
}

/// The associated data of the key check value stored in the catalog.
pub const KEY_CHECK_CONTEXT: &[u8] = b"toolmesh/key-check/v1";

/// Write a file readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let k = SecretKey::generate();
        let sealed = k.seal(b"a", b"secret");
        assert_eq!(k.open(b"a", &sealed).unwrap(), b"secret");
        assert!(k.open(b"b", &sealed).is_err(), "context is bound");
        assert!(
            SecretKey::generate().open(b"a", &sealed).is_err(),
            "other key"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(k.open(b"a", &tampered).is_err());
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn parse_hex_and_base64() {
        let k = SecretKey::generate();
        let hex = k.to_hex();
        assert_eq!(SecretKey::parse(&hex, "t").unwrap().0, k.0);
        let b64 = base64::engine::general_purpose::STANDARD.encode(k.0);
        assert_eq!(SecretKey::parse(&b64, "t").unwrap().0, k.0);
        assert!(SecretKey::parse("short", "t").is_err());
    }

    #[test]
    fn generated_key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, src) = SecretKey::load(None, None, dir.path()).unwrap();
        assert!(matches!(src, KeySource::Generated(_)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("secret.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (k2, src) = SecretKey::load(None, None, dir.path()).unwrap();
        assert!(matches!(src, KeySource::File(_)));
        assert_eq!(k1.0, k2.0);
    }
}
