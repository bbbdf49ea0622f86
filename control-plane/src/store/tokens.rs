//! The SQL of tokens and signing keys, per backend (same macro approach as `sql.rs`).
//!
//! Only a token's id (`jti`) and metadata are stored, never the token: a leaked database cannot
//! be replayed against the gateway. Signing keys are stored with the private half sealed by the
//! operator's secret key. Issuing and revoking a token and adding a key bump the catalog version,
//! because each changes what Envoy gets: the per-virtual-server callers that have their own stats
//! and the revoked ids (both in the policy), the JWKS.

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::types::Json;

use super::*;

/// A token signing key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// Key id (JWT header `kid`, JWK `kid`).
    pub kid: String,
    /// `EdDSA`.
    pub algorithm: String,
    /// The raw public key, base64url without padding (JWK `x`).
    pub public_key: String,
    /// The PKCS#8 private key, sealed with the secret key (context: the kid).
    pub private_key_sealed: Vec<u8>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// When a newer key replaced it for signing.
    pub retired_at: Option<DateTime<Utc>>,
}

/// A token to store (the signed JWT itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The id (`jti`).
    pub id: String,
    /// Who or what holds it.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Virtual servers it opens, or `["*"]`.
    pub virtual_servers: Vec<String>,
    /// Source CIDRs it may be used from (empty: anywhere).
    pub source_cidrs: Vec<String>,
    /// The key that signed it.
    pub kid: String,
    /// Issued at.
    pub created_at: DateTime<Utc>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The stored fields.
    pub token: NewToken,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

const KEY_COLS: &str = "kid, algorithm, public_key, private_key_sealed, created_at, retired_at";
const TOKEN_COLS: &str = "seq, id, name, description, virtual_servers, source_cidrs, kid, \
    created_at, expires_at, revoked_at";

macro_rules! token_sql {
    ($Store:ident, $DB:ty, $Row:ty, begin_write = $begin_write:literal, notify = $notify:literal) => {
        impl $Store {
            async fn bump_tx(c: &mut sqlx::Transaction<'static, $DB>) -> Result<i64, StoreError> {
                let v: i64 = sqlx::query_scalar(
                    "UPDATE catalog_version SET version = version + 1 WHERE id = 1 RETURNING version",
                )
                .fetch_one(&mut **c)
                .await?;
                if !$notify.is_empty() {
                    sqlx::query($notify).bind(v.to_string()).execute(&mut **c).await?;
                }
                Ok(v)
            }

            fn key_from_row(row: &$Row) -> Result<SigningKeyRecord, StoreError> {
                Ok(SigningKeyRecord {
                    kid: row.try_get("kid")?,
                    algorithm: row.try_get("algorithm")?,
                    public_key: row.try_get("public_key")?,
                    private_key_sealed: row.try_get("private_key_sealed")?,
                    created_at: row.try_get("created_at")?,
                    retired_at: row.try_get("retired_at")?,
                })
            }

            fn token_from_row(row: &$Row) -> Result<TokenRecord, StoreError> {
                Ok(TokenRecord {
                    token: NewToken {
                        id: row.try_get("id")?,
                        name: row.try_get("name")?,
                        description: row.try_get("description")?,
                        virtual_servers: row.try_get::<Json<Vec<String>>, _>("virtual_servers")?.0,
                        source_cidrs: row.try_get::<Json<Vec<String>>, _>("source_cidrs")?.0,
                        kid: row.try_get("kid")?,
                        created_at: row.try_get("created_at")?,
                        expires_at: row.try_get("expires_at")?,
                    },
                    revoked_at: row.try_get("revoked_at")?,
                })
            }

            pub(super) async fn add_signing_key(
                &self,
                key: &SigningKeyRecord,
                only_if_none: bool,
            ) -> Result<Option<i64>, StoreError> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                if only_if_none {
                    let n: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM signing_keys WHERE retired_at IS NULL",
                    )
                    .fetch_one(&mut *tx)
                    .await?;
                    if n > 0 {
                        return Ok(None);
                    }
                }
                let v = Self::bump_tx(&mut tx).await?;
                sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
                    .bind(key.created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO signing_keys (kid, algorithm, public_key, private_key_sealed, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&key.kid)
                .bind(&key.algorithm)
                .bind(&key.public_key)
                .bind(&key.private_key_sealed)
                .bind(key.created_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(v))
            }

            pub(super) async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {KEY_COLS} FROM signing_keys ORDER BY created_at, kid"
                ))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::key_from_row).collect()
            }

            pub(super) async fn keys_in_use(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
                Ok(sqlx::query_scalar(
                    "SELECT DISTINCT kid FROM tokens WHERE revoked_at IS NULL \
                     AND (expires_at IS NULL OR expires_at > $1) ORDER BY kid",
                )
                .bind(now)
                .fetch_all(&self.pool)
                .await?)
            }

            pub(super) async fn create_token(
                &self,
                t: &NewToken,
            ) -> Result<(TokenRecord, i64), StoreError> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                if t.virtual_servers != ["*"] {
                    for (i, vs) in t.virtual_servers.iter().enumerate() {
                        let found: Option<i64> =
                            sqlx::query_scalar("SELECT id FROM virtual_servers WHERE name = $1")
                                .bind(vs)
                                .fetch_optional(&mut *tx)
                                .await?;
                        if found.is_none() {
                            return Err(StoreError::Invalid {
                                field: format!("virtual_servers[{i}]"),
                                message: format!("virtual_servers[{i}]: unknown virtual server '{vs}'"),
                            });
                        }
                    }
                }
                sqlx::query(
                    "INSERT INTO tokens (id, name, description, virtual_servers, source_cidrs, kid, \
                     created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&t.id)
                .bind(&t.name)
                .bind(&t.description)
                .bind(Json(&t.virtual_servers))
                .bind(Json(&t.source_cidrs))
                .bind(&t.kid)
                .bind(t.created_at)
                .bind(t.expires_at)
                .execute(&mut *tx)
                .await?;
                let v = Self::bump_tx(&mut tx).await?;
                tx.commit().await?;
                Ok((TokenRecord { token: t.clone(), revoked_at: None }, v))
            }

            pub(super) async fn live_tokens(
                &self,
                now: DateTime<Utc>,
            ) -> Result<Vec<TokenRecord>, StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {TOKEN_COLS} FROM tokens WHERE revoked_at IS NULL \
                     AND (expires_at IS NULL OR expires_at > $1) ORDER BY seq DESC"
                ))
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::token_from_row).collect()
            }

            pub(super) async fn token_names(&self) -> Result<Vec<(String, String)>, StoreError> {
                let rows = sqlx::query("SELECT id, name FROM tokens ORDER BY seq")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
                    .collect()
            }

            pub(super) async fn get_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
                let row = sqlx::query(&format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| StoreError::NotFound { kind: "token", name: id.to_string() })?;
                Self::token_from_row(&row)
            }

            pub(super) async fn list_tokens(&self, page: &PageRequest) -> Result<Page<TokenRecord>, StoreError> {
                let after = match page.cursor.as_deref() {
                    None => None,
                    Some(c) => Some(c.parse::<i64>().map_err(|_| StoreError::Invalid {
                        field: "cursor".into(),
                        message: format!("cursor: {c:?} is not a cursor returned by this list"),
                    })?),
                };
                let rows = sqlx::query(&format!(
                    "SELECT {TOKEN_COLS} FROM tokens WHERE seq > $1 ORDER BY seq LIMIT $2"
                ))
                .bind(after.unwrap_or(0))
                .bind(i64::from(page.limit) + 1)
                .fetch_all(&self.pool)
                .await?;
                let mut items = Vec::with_capacity(rows.len());
                let mut last_seq = 0i64;
                for row in rows.iter().take(page.limit as usize) {
                    last_seq = row.try_get("seq")?;
                    items.push(Self::token_from_row(row)?);
                }
                let next_cursor = (rows.len() > page.limit as usize).then(|| last_seq.to_string());
                Ok(Page { items, next_cursor })
            }

            pub(super) async fn revoke_token(
                &self,
                id: &str,
                now: DateTime<Utc>,
            ) -> Result<(TokenRecord, Option<i64>), StoreError> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                let row = sqlx::query(&format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| StoreError::NotFound { kind: "token", name: id.to_string() })?;
                let mut rec = Self::token_from_row(&row)?;
                if rec.revoked_at.is_some() {
                    return Ok((rec, None));
                }
                let v = Self::bump_tx(&mut tx).await?;
                sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                rec.revoked_at = Some(now);
                Ok((rec, Some(v)))
            }

            pub(super) async fn revoked_token_ids(
                &self,
                expired_before: DateTime<Utc>,
            ) -> Result<Vec<String>, StoreError> {
                Ok(sqlx::query_scalar(
                    "SELECT id FROM tokens WHERE revoked_at IS NOT NULL \
                     AND (expires_at IS NULL OR expires_at > $1) ORDER BY id",
                )
                .bind(expired_before)
                .fetch_all(&self.pool)
                .await?)
            }

            pub(super) async fn anonymous_virtual_servers(&self) -> Result<Vec<String>, StoreError> {
                Ok(sqlx::query_scalar(
                    "SELECT name FROM virtual_servers WHERE anonymous = TRUE ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?)
            }
        }
    };
}

token_sql!(
    PgStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    begin_write = "BEGIN",
    notify = "SELECT pg_notify('toolmesh_catalog', $1)"
);

token_sql!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteRow,
    begin_write = "BEGIN IMMEDIATE",
    notify = ""
);

impl Store {
    /// Add a signing key that becomes the active one (older keys are retired from signing but
    /// kept for verification). With `only_if_none`, nothing happens when an active key exists
    /// (first start of several replicas at once). Returns whether the key was added.
    pub async fn add_signing_key(
        &self,
        key: &SigningKeyRecord,
        only_if_none: bool,
    ) -> Result<bool, StoreError> {
        let v = dispatch!(self, s => s.add_signing_key(key, only_if_none).await)?;
        if let Some(v) = v {
            self.publish(v);
        }
        Ok(v.is_some())
    }

    /// Every signing key, oldest first (the last one not retired signs new tokens).
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        dispatch!(self, s => s.signing_keys().await)
    }

    /// The kids of keys that signed a token that is neither revoked nor expired at `now`.
    pub async fn keys_in_use(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.keys_in_use(now).await)
    }

    /// Store a new token; every virtual server must exist (unless the scope is `["*"]`). Bumps
    /// the catalog version: the token joins the callers of its virtual servers in the policy.
    pub async fn create_token(&self, token: &NewToken) -> Result<TokenRecord, StoreError> {
        let (rec, v) = dispatch!(self, s => s.create_token(token).await)?;
        self.publish(v);
        Ok(rec)
    }

    /// Tokens neither revoked nor expired at `now`, newest (last issued) first.
    pub async fn live_tokens(&self, now: DateTime<Utc>) -> Result<Vec<TokenRecord>, StoreError> {
        dispatch!(self, s => s.live_tokens(now).await)
    }

    /// `(id, name)` of every token ever issued, in issue order.
    pub async fn token_names(&self) -> Result<Vec<(String, String)>, StoreError> {
        dispatch!(self, s => s.token_names().await)
    }

    /// One token by id.
    pub async fn get_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        dispatch!(self, s => s.get_token(id).await)
    }

    /// Tokens in issue order.
    pub async fn list_tokens(&self, page: &PageRequest) -> Result<Page<TokenRecord>, StoreError> {
        dispatch!(self, s => s.list_tokens(page).await)
    }

    /// Revoke a token (idempotent: revoking again keeps the first time).
    pub async fn revoke_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        // Microseconds: what both backends store, so the answer equals later reads.
        let now = DateTime::<Utc>::from_timestamp_micros(Utc::now().timestamp_micros())
            .unwrap_or_else(Utc::now);
        let (rec, v) = dispatch!(self, s => s.revoke_token(id, now).await)?;
        if let Some(v) = v {
            self.publish(v);
        }
        Ok(rec)
    }

    /// Ids of revoked tokens that expire after `expired_before` or never.
    pub async fn revoked_token_ids(
        &self,
        expired_before: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.revoked_token_ids(expired_before).await)
    }

    /// Names of the virtual servers that accept requests without a token.
    pub async fn anonymous_virtual_servers(&self) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.anonymous_virtual_servers().await)
    }
}
