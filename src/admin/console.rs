//! The operator console: one static page embedded in the binary (no build step), served at `/`,
//! with three scripts beside it: `console-pages.js` (the control-plane pages: products and their
//! broker config, subscriptions, hosted credentials, restarts), `console-device.js` (the device
//! page's commands and message log) and `console-main.js` (login, router, devices pages). It
//! logs in with the admin token typed into its form (kept in `sessionStorage`, never read from
//! the URL) and calls the admin API; the scripts hold no data, so they are served without a
//! token. The page has no inline script or handler, so its CSP allows scripts from `'self'` only.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("console.html");
const PAGES_JS: &str = include_str!("console-pages.js");
const DEVICE_JS: &str = include_str!("console-device.js");
const MAIN_JS: &str = include_str!("console-main.js");

/// Styles stay inline (the page's `<style>`); scripts come only from the server's own files.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; script-src 'self'";

/// `GET /`
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        PAGE,
    )
}

/// A script of the page: not cached, so that it always matches the page the binary serves.
fn script(body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// `GET /console/pages.js`
pub async fn pages_js() -> impl IntoResponse {
    script(PAGES_JS)
}

/// `GET /console/device.js`
pub async fn device_js() -> impl IntoResponse {
    script(DEVICE_JS)
}

/// `GET /console/main.js`
pub async fn main_js() -> impl IntoResponse {
    script(MAIN_JS)
}
