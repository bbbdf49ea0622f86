//! Request extractors whose rejections are [`ApiError`]s that name the field.
//!
//! axum's own `Json` rejection is plain text and says "Failed to deserialize…"; here a wrong
//! content type is a 415, broken JSON a 400, and a body that does not fit the schema a 422 whose
//! `field` is the JSON path serde stopped at (`tools[2].expose_as`) or the missing/unknown field.
//! Query strings are read as a flat map and each parameter parsed by the handler, so unknown or
//! malformed parameters are refused by name as well.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::store::PageRequest;

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size.
pub const MAX_LIMIT: u32 = 500;

/// A JSON body.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !(mime == "application/json"
            || (mime.starts_with("application/") && mime.ends_with("+json")))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a JSON body with 'content-type: application/json'",
                Some("content-type".into()),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is too large",
                    None,
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    format!("cannot read the request body: {e}"),
                    None,
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parse a JSON body, naming the field serde stopped at.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(&path, &inner)
    })?;
    de.end().map_err(|e| json_error(".", &e))?;
    Ok(value)
}

fn json_error(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let msg = e.to_string();
    let mut field = (path != "." && !path.is_empty()).then(|| path.to_string());
    // `missing field `x`` is reported at the parent: name the child.
    // (serde_path_to_error already ends the path with an unknown field's name.)
    if let Some(rest) = msg.strip_prefix("missing field `")
        && let Some(name) = rest.split('`').next()
    {
        field = Some(match field {
            Some(parent) => format!("{parent}.{name}"),
            None => name.to_string(),
        });
    }
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("request body is not valid JSON: {msg}"),
            None,
        ),
        Category::Data => {
            let message = match &field {
                Some(f) => format!("{f}: {msg}"),
                None => format!("request body: {msg}"),
            };
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                message,
                field,
            )
        }
    }
}

/// The query string as a map; handlers take what they allow with [`Query::check`].
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
            .map_err(|e| ApiError::query("query", format!("malformed query string: {e}")))?;
        let mut map = HashMap::new();
        for (k, v) in pairs {
            if map.insert(k.clone(), v).is_some() {
                return Err(ApiError::query(
                    k.clone(),
                    format!("query parameter '{k}' is given more than once"),
                ));
            }
        }
        Ok(Self(map))
    }
}

impl Query {
    /// Refuse parameters not in `allowed`.
    pub fn check(&self, allowed: &[&str]) -> Result<(), ApiError> {
        let mut unknown: Vec<&String> = self
            .0
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        unknown.sort();
        match unknown.first() {
            Some(k) => Err(ApiError::query(
                k.as_str(),
                format!(
                    "unknown query parameter '{k}'; this endpoint takes: {}",
                    allowed.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    /// A string parameter (empty counts as absent).
    pub fn str(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.is_empty()).cloned()
    }

    /// A boolean parameter (`true`/`false`).
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None | Some("") => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::query(
                name,
                format!("{name}: expected true or false, got {other:?}"),
            )),
        }
    }

    /// `limit` and `cursor`.
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        let limit = match self.0.get("limit").map(String::as_str) {
            None | Some("") => DEFAULT_LIMIT,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::query(
                        "limit",
                        format!("limit: expected an integer from 1 to {MAX_LIMIT}, got {v:?}"),
                    ));
                }
            },
        };
        Ok(PageRequest {
            limit,
            cursor: self.str("cursor"),
        })
    }
}

/// Parse a numeric id from the path.
pub fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::not_found(format!(
            "no item with id {raw:?}: ids are positive integers"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        tools: Vec<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        tool: String,
        expose_as: Option<String>,
    }

    fn field_of(json: &str) -> (StatusCode, Option<String>) {
        let e = parse_json::<Body>(json.as_bytes()).unwrap_err();
        (e.status(), e.field().map(str::to_string))
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"name": 1, "tools": []}"#),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("name".into()))
        );
        assert_eq!(
            field_of(r#"{"tools": []}"#),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("name".into()))
        );
        assert_eq!(
            field_of(r#"{"name": "a", "tools": [{"tool": "x"}, {"tool": "y", "expose_as": 3}]}"#),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("tools[1].expose_as".into())
            )
        );
        assert_eq!(
            field_of(r#"{"name": "a", "tools": [{"tol": "x"}]}"#),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("tools[0].tol".into())
            )
        );
        assert_eq!(field_of(r#"{"name": "#), (StatusCode::BAD_REQUEST, None));
        assert_eq!(
            field_of(r#"{"name": "a", "tools": []} x"#),
            (StatusCode::BAD_REQUEST, None)
        );
    }
}
