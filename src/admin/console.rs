//! The operator console: one static page embedded in the binary (no build step), served at `/`.
//! It logs in with the admin token (kept in `sessionStorage`) and calls the admin API.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("console.html");

/// `GET /`
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("content-security-policy"), "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"),
        ],
        PAGE,
    )
}
