//! Third-party files the console loads, embedded in the binary so that it needs nothing from the
//! internet: uPlot (MIT, `vendor/LICENSE`), refreshed by `scripts/vendor-uplot`, which pins
//! its version (`vendor/VERSION`). Served without a token: they are the published package's
//! files. The version is in the URL's query string of the page's links, so a long cache is safe.

use axum::http::header;
use axum::response::IntoResponse;

const UPLOT_JS: &str = include_str!("vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("vendor/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("vendor/LICENSE");

/// A year: the files change only with a new binary, whose page links carry the new version.
const CACHE: &str = "public, max-age=31536000, immutable";

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, CACHE),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// `GET /vendor/uPlot.iife.min.js`
pub async fn uplot_js() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", UPLOT_JS)
}

/// `GET /vendor/uPlot.min.css`
pub async fn uplot_css() -> impl IntoResponse {
    file("text/css; charset=utf-8", UPLOT_CSS)
}

/// `GET /vendor/uPlot.LICENSE`
pub async fn uplot_license() -> impl IntoResponse {
    file("text/plain; charset=utf-8", UPLOT_LICENSE)
}
