//! The one error type at the HTTP edge.
//!
//! Every failure leaves as `{"error": {"code", "message", "field"?}}` with a 4xx status naming
//! the field for bad input. Database and other internal errors are logged with their detail and
//! answered with a generic 500, so SQL text never reaches a client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `invalid_json`, `invalid_body`, `invalid_query`,
    /// `validation_failed`, `unsupported_media_type`, `payload_too_large`, `unauthorized`,
    /// `not_found`, `method_not_allowed`, `conflict`, `internal`.
    pub code: String,
    /// A sentence a person can act on.
    pub message: String,
    /// The offending field (`url`, `tools[2].tool`, `limit`), when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    /// An error with everything spelled out.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        field: Option<String>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field,
        }
    }

    /// 422: the request is well-formed but a field's value is not acceptable.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
            Some(field.into()),
        )
    }

    /// 400: a query parameter is malformed or unknown.
    pub fn query(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            message,
            Some(field.into()),
        )
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message, None)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message, None)
    }

    /// 500, after logging the cause.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error while serving a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the control-plane log has the details",
            None,
        )
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The field blamed, if any.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"toolmesh admin\""),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::not_found(e.to_string()),
            StoreError::AlreadyExists { .. } => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                e.to_string(),
                Some("name".into()),
            ),
            StoreError::InUse { .. } | StoreError::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string(), None)
            }
            StoreError::Invalid { ref field, .. } => {
                let field = field.clone();
                if field == "cursor" {
                    Self::query(field, e.to_string())
                } else {
                    Self::validation(field, e.to_string())
                }
            }
            StoreError::Database(_) | StoreError::Migrate(_) | StoreError::Corrupt(_) => {
                Self::internal(&e)
            }
        }
    }
}
