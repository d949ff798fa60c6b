//! Full-size images of stored captures: the JPEG itself, streamed from object storage, and a
//! link to it: a presigned URL when the store can sign (S3), else this API's own download URL.
//!
//! `{capture_id}` is the device's capture id (`captures.device_capture_id`), as in the
//! thumbnail route. A capture that is unknown, not `stored`, or whose image retention deleted
//! (`deleted_at`) is a 404 whose message says which.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use fleetflow_actors::sinks::signer::MAX_EXPIRY;
use fleetflow_protocol::ids::is_valid_capture_id;
use object_store::path::Path;
use object_store::signer::Method;
use object_store::ObjectStoreExt;
use serde_json::{json, Value};

use super::{AdminState, ApiError};

/// A link's lifetime when `expires_in_s` is absent: 15 minutes.
const DEFAULT_EXPIRES_IN_S: u64 = 900;

/// A stored capture's image: its key in the store and a file name to offer.
struct StoredImage {
    /// The object's key (`captures.storage_path`).
    path: Path,
    /// `{device_id}_{capture_id}.jpg`.
    filename: String,
}

/// Checks the ids and finds the capture's stored image, or says why there is none.
async fn stored_image(s: &AdminState, raw: &str, capture: &str) -> Result<StoredImage, ApiError> {
    let id = super::params::device_id(raw)?;
    if !is_valid_capture_id(capture) {
        return Err(ApiError::bad_field("capture_id", "invalid capture id"));
    }
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let row = c
        .query_opt(
            "SELECT ingest_status, storage_path, deleted_at FROM captures
             WHERE device_id = $1 AND device_capture_id = $2",
            &[&id.as_str(), &capture],
        )
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no capture {capture} for {id}")))?;
    let status: String = row.get("ingest_status");
    if status != "stored" {
        return Err(ApiError::not_found(format!(
            "capture {capture} of {id} is {status}, not stored"
        )));
    }
    if let Some(at) = row.get::<_, Option<DateTime<Utc>>>("deleted_at") {
        return Err(ApiError::not_found(format!(
            "the image of capture {capture} of {id} was deleted by retention at {at}"
        )));
    }
    let path: String = row
        .get::<_, Option<String>>("storage_path")
        .ok_or_else(|| ApiError::not_found(format!("capture {capture} of {id} has no image")))?;
    // Capture ids are `[A-Za-z0-9._-]`, so the name needs no escaping; GXP names may already
    // end in `.jpg`.
    let lower = capture.to_ascii_lowercase();
    let ext = if lower.ends_with(".jpg") || lower.ends_with(".jpeg") {
        ""
    } else {
        ".jpg"
    };
    Ok(StoredImage {
        path: Path::from(path.as_str()),
        filename: format!("{id}_{capture}{ext}"),
    })
}

/// `GET /api/v1/devices/{device_id}/captures/{capture_id}/image`: the stored JPEG, streamed
/// from object storage without holding it in memory.
pub async fn image(
    State(s): State<AdminState>,
    UrlPath((raw, capture)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    let img = stored_image(&s, &raw, &capture).await?;
    let got = match s.store.get(&img.path).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(ApiError::not_found(format!(
                "the image of capture {capture} is missing from object storage"
            )))
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    let len = got.meta.size;
    let disposition = HeaderValue::from_str(&format!("inline; filename=\"{}\"", img.filename))
        .map_err(ApiError::internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            ),
        ],
        Body::from_stream(got.into_stream()),
    )
        .into_response())
}

/// `expires_in_s`: 1 s to 7 days, default 15 minutes.
fn expires_in(q: &HashMap<String, String>) -> Result<Duration, ApiError> {
    let max = MAX_EXPIRY.as_secs();
    let Some(raw) = q.get("expires_in_s") else {
        return Ok(Duration::from_secs(DEFAULT_EXPIRES_IN_S));
    };
    match raw.trim().parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Duration::from_secs(n)),
        _ => Err(ApiError::bad_field(
            "expires_in_s",
            format!("expires_in_s must be a whole number of seconds from 1 to {max} (7 days), got {raw:?}"),
        )),
    }
}

/// `GET /api/v1/devices/{device_id}/captures/{capture_id}/link?expires_in_s=900`: a presigned
/// URL that fetches the image with a plain GET until `expires_at` (S3); on the local
/// filesystem, which cannot sign, the image endpoint's URL (`"signed": false`: it needs the
/// admin token and does not expire).
pub async fn link(
    State(s): State<AdminState>,
    UrlPath((raw, capture)): UrlPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let expires = expires_in(&q)?;
    let img = stored_image(&s, &raw, &capture).await?;
    if let Some(signer) = &s.signer {
        let url = signer
            .signed_url(Method::GET, &img.path, expires)
            .await
            .map_err(ApiError::internal)?;
        let expires_at =
            Utc::now() + chrono::Duration::from_std(expires).map_err(ApiError::internal)?;
        return Ok(Json(json!({
            "url": url.as_str(),
            "signed": true,
            "expires_at": expires_at,
            "expires_in_s": expires.as_secs(),
        })));
    }
    let path = format!("/api/v1/devices/{raw}/captures/{capture}/image");
    Ok(Json(json!({
        "url": absolute(&headers, &path),
        "signed": false,
        "expires_at": null,
        "message": "the object store is the local filesystem, which cannot sign URLs: this is the API's download URL; it needs the admin token (Authorization: Bearer) and does not expire",
    })))
}

/// `path` on the host the request was sent to (`X-Forwarded-Proto` says whether through
/// https); the bare path when the request named no host.
fn absolute(headers: &HeaderMap, path: &str) -> String {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return path.to_string();
    };
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    format!("{}://{host}{path}", if https { "https" } else { "http" })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::http::{header, HeaderMap, HeaderValue};

    fn q(v: &str) -> HashMap<String, String> {
        HashMap::from([("expires_in_s".to_string(), v.to_string())])
    }

    #[test]
    fn link_lifetimes_are_1_s_to_7_days_and_15_minutes_by_default() {
        assert_eq!(super::expires_in(&HashMap::new()).unwrap().as_secs(), 900);
        assert_eq!(super::expires_in(&q("1")).unwrap().as_secs(), 1);
        assert_eq!(super::expires_in(&q("604800")).unwrap().as_secs(), 604_800);
        for bad in ["0", "604801", "-5", "1.5", "soon", ""] {
            let e = super::expires_in(&q(bad)).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("expires_in_s"), "{bad}");
        }
    }

    #[test]
    fn the_unsigned_link_is_on_the_host_the_request_came_to() {
        let mut h = HeaderMap::new();
        assert_eq!(super::absolute(&h, "/a"), "/a");
        h.insert(header::HOST, HeaderValue::from_static("fleet.example:9464"));
        assert_eq!(super::absolute(&h, "/a"), "http://fleet.example:9464/a");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(super::absolute(&h, "/a"), "https://fleet.example:9464/a");
    }
}
