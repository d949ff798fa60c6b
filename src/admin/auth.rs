//! Bearer-token authentication (named tokens, compared as digests in constant time: `tokens`),
//! refused requests handed to the audit (`audit`), and JSON errors of the form
//! `{"error": {"code", "message", "field"?}}`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::audit::Refusal;
use super::tokens::Caller;
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

/// The bearer token of a request (empty when there is none).
pub fn bearer(req: &Request) -> &str {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// A refused request, as the audit records it.
pub fn refusal(req: &Request, entry: &'static str, reason: &'static str) -> Refusal {
    Refusal {
        entry,
        reason,
        action: format!("{} {}", req.method(), req.uri().path()),
        actor: req.extensions().get::<Caller>().map(|c| c.0.to_string()),
        remote: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
    }
}

/// Middleware: every API request needs `Authorization: Bearer <token>`, one of the admin
/// tokens; its name goes with the request as [`Caller`].
pub async fn require_token(State(s): State<AdminState>, mut req: Request, next: Next) -> Response {
    if !s.tokens.has_admin() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin_disabled",
            "the admin API has no token: set FLEETFLOW_ADMIN__TOKEN, admin.token_file or admin.tokens_file",
        )
        .into_response();
    }
    let Some(caller) = s.tokens.admin(bearer(&req)) else {
        s.audit.refused(refusal(&req, "api", "unauthorized"));
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
        .into_response();
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Middleware for `POST /api/v1/restarts`: an admin bearer token, or a restart-only token in
/// `X-Restart-Token`; the token's name goes with the request as [`Caller`].
pub async fn require_restart_access(
    State(s): State<AdminState>,
    mut req: Request,
    next: Next,
) -> Response {
    if !s.tokens.has_admin() && !s.tokens.has_restart() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin_disabled",
            "no admin or restart token is configured",
        )
        .into_response();
    }
    let restart = req
        .headers()
        .get("x-restart-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let caller = s
        .tokens
        .admin(bearer(&req))
        .or_else(|| s.tokens.restart(restart));
    let Some(caller) = caller else {
        s.audit.refused(refusal(&req, "restart", "unauthorized"));
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token or X-Restart-Token",
        )
        .into_response();
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}
