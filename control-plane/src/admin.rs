//! The admin bearer token that guards `/v1`.
//!
//! Only its SHA-256 is stored (settings key `admin_token_sha256`), so a database dump does not
//! open the API. `TOOLMESH_ADMIN_TOKEN` sets it on every start; without it, the first start
//! generates a random token and prints it once; `toolmesh admin reset-token` replaces it. The
//! check reads the stored hash on every request, so a reset (or another replica's start with a
//! new token) takes effect immediately without a restart.

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::store::{Store, StoreError};

/// The settings key holding the token's hex SHA-256.
pub const ADMIN_TOKEN_KEY: &str = "admin_token_sha256";

/// What happened to the admin token at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSetup {
    /// Taken from `TOOLMESH_ADMIN_TOKEN` (its hash is now the stored one).
    FromEnv,
    /// Generated now; this is the only time it is known.
    Generated(String),
    /// A token from an earlier start is in place.
    Existing,
}

/// Hex SHA-256 of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compare without an early exit.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random token (`tmadm_` + 64 hex characters).
pub fn generate_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("tmadm_{}", hex::encode(b))
}

/// Put the admin token in place at startup.
pub async fn ensure_admin_token(
    store: &Store,
    from_env: Option<&str>,
) -> Result<TokenSetup, StoreError> {
    if let Some(t) = from_env.filter(|t| !t.is_empty()) {
        store.set_setting(ADMIN_TOKEN_KEY, &token_hash(t)).await?;
        return Ok(TokenSetup::FromEnv);
    }
    let token = generate_token();
    if store
        .set_setting_if_absent(ADMIN_TOKEN_KEY, &token_hash(&token))
        .await?
    {
        Ok(TokenSetup::Generated(token))
    } else {
        Ok(TokenSetup::Existing)
    }
}

/// Replace the admin token with a new random one and return it.
pub async fn reset_admin_token(store: &Store) -> Result<String, StoreError> {
    let token = generate_token();
    store
        .set_setting(ADMIN_TOKEN_KEY, &token_hash(&token))
        .await?;
    Ok(token)
}

/// Does `presented` match the stored token?
pub async fn verify(store: &Store, presented: &str) -> Result<bool, StoreError> {
    let Some(stored) = store.get_setting(ADMIN_TOKEN_KEY).await? else {
        return Ok(false);
    };
    Ok(ct_eq(token_hash(presented).as_bytes(), stored.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 6 + 64);
    }
}
