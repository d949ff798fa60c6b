//! Bearer-token authentication, compared in constant time, and JSON errors of the form
//! `{"error": {"code", "message", "field"?}}`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::AdminState;

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The offending field, for 400s.
    pub field: Option<String>,
    /// Seconds, for 429s.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }
    /// 400 naming a field; the message is anything printable, a validation error included.
    pub fn bad_field(field: &str, message: impl std::fmt::Display) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid", message.to_string());
        e.field = Some(field.to_string());
        e
    }
    /// 404.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    /// 500 from an internal failure (the detail is logged, not returned).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "admin API internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the engine log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(f) = self.field {
            body["error"]["field"] = json!(f);
        }
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// Whether `presented` equals the token, in time independent of where they differ.
pub fn token_matches(token: &str, presented: &str) -> bool {
    // Lengths are compared in constant time too (ct_eq on unequal lengths is false). An empty
    // token never matches.
    !token.is_empty() && bool::from(token.as_bytes().ct_eq(presented.as_bytes()))
}

/// Middleware: every API request needs `Authorization: Bearer <token>`.
pub async fn require_token(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let Some(token) = s.token.as_deref() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin_disabled",
            "the admin API has no token: set FLEETFLOW_ADMIN__TOKEN or admin.token_file",
        )
        .into_response();
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token_matches(token, presented) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
        .into_response();
    }
    next.run(req).await
}

/// Middleware for `POST /api/v1/restarts`: the admin bearer token, or the restart-only token in
/// `X-Restart-Token` (both compared in constant time).
pub async fn require_restart_access(
    State(s): State<AdminState>,
    req: Request,
    next: Next,
) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let restart = req
        .headers()
        .get("x-restart-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let admin_ok = s.token.as_deref().is_some_and(|t| token_matches(t, bearer));
    let restart_ok = s
        .restart_token
        .as_deref()
        .is_some_and(|t| token_matches(t, restart));
    if s.token.is_none() && s.restart_token.is_none() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin_disabled",
            "no admin or restart token is configured",
        )
        .into_response();
    }
    if !(admin_ok || restart_ok) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token or X-Restart-Token",
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_match_only_exactly() {
        assert!(super::token_matches("s3cret-token", "s3cret-token"));
        assert!(!super::token_matches("s3cret-token", "s3cret-tokeN"));
        assert!(!super::token_matches("s3cret-token", "s3cret"));
        assert!(!super::token_matches("s3cret-token", ""));
        assert!(!super::token_matches("", ""));
    }
}
