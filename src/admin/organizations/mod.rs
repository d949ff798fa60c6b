//! `/api/v1/organizations/{org_id}/...`: hosted-broker credentials (generate, list, revoke,
//! rotate), organisation tokens, and publishing limited to the organisation's topics.
//!
//! These routes take the admin token, or an organisation token (created by an admin, stored as
//! a SHA-256 hash) for that organisation only. Creating organisation tokens needs the admin
//! token.
//!
//! - `credentials`: the credential API (create, list, revoke, rotate).
//! - `publish`: publishing under the organisation's topics (its body checks are shared with
//!   the product publish API).

mod credentials;
mod publish;

use std::collections::HashMap;

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{AdminState, ApiError};
use crate::hosted::Hosted;
pub use credentials::{create, list, revoke, rotate};
pub use publish::{publish, validate_publish, PublishBody};

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The admin token: any organisation.
    Admin,
    /// An organisation token: that organisation only.
    Organization(i64),
}

fn org_id(params: &HashMap<String, String>) -> Result<i64, ApiError> {
    params
        .get("org_id")
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad_field("org_id", "the organisation id is a positive integer"))
}

fn sha256(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Middleware: the admin token, or an active token of the organisation in the path.
pub async fn require_org_access(
    State(s): State<AdminState>,
    UrlPath(params): UrlPath<HashMap<String, String>>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let org = match org_id(&params) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let caller = if s.tokens.admin(&presented).is_some() {
        Some(Caller::Admin)
    } else if presented.starts_with("fft_") {
        match lookup_org_token(&s, &presented).await {
            Ok(Some(o)) if o == org => Some(Caller::Organization(o)),
            Ok(Some(_)) => {
                s.audit
                    .refused(super::auth::refusal(&req, "organization", "forbidden"));
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this organisation token belongs to another organisation",
                )
                .into_response();
            }
            Ok(None) => None,
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    let Some(caller) = caller else {
        s.audit
            .refused(super::auth::refusal(&req, "organization", "unauthorized"));
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

async fn lookup_org_token(s: &AdminState, token: &str) -> Result<Option<i64>, ApiError> {
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    Ok(c
        .query_opt(
            "UPDATE organization_tokens SET last_used_at = now() WHERE token_sha256 = $1 AND revoked_at IS NULL RETURNING organization_id",
            &[&sha256(token)],
        )
        .await
        .map_err(ApiError::internal)?
        .map(|r| r.get(0)))
}

/// For an organisation caller, switches `tx` to the `fleetflow_tenant` role with
/// `app.organization_id` set (both until the transaction ends), so that row-level security,
/// and not only each query's `WHERE`, keeps the organisation to its own rows. The admin caller
/// keeps the engine's role.
pub(super) async fn as_caller(
    tx: &deadpool_postgres::Transaction<'_>,
    caller: Caller,
) -> Result<(), ApiError> {
    if let Caller::Organization(org) = caller {
        tx.batch_execute("SET LOCAL ROLE fleetflow_tenant")
            .await
            .map_err(ApiError::internal)?;
        tx.execute(
            "SELECT set_config('app.organization_id', $1, true)",
            &[&org.to_string()],
        )
        .await
        .map_err(ApiError::internal)?;
    }
    Ok(())
}

fn hosted(s: &AdminState) -> Result<&Hosted, ApiError> {
    s.hosted.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "hosted_broker_disabled",
            "no hosted broker is configured ([hosted] broker_url)",
        )
    })
}

fn broker_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "hosted_broker_unavailable",
        format!("the hosted broker did not apply the change: {e}"),
    )
}

/// `POST /api/v1/organizations/{org_id}/tokens` (admin token only): an organisation token,
/// shown once.
pub async fn create_token(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    UrlPath(params): UrlPath<HashMap<String, String>>,
    body: Option<Json<Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let org = org_id(&params)?;
    if caller != Caller::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "organisation tokens are created with the admin token",
        ));
    }
    let name = body
        .as_ref()
        .and_then(|Json(b)| b.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let token = format!("fft_{}", Alphanumeric.sample_string(&mut rand::rng(), 40));
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let id: i64 = c
        .query_one(
            "INSERT INTO organization_tokens (organization_id, name, token_sha256) VALUES ($1, $2, $3) RETURNING id",
            &[&org, &name, &sha256(&token)],
        )
        .await
        .map_err(ApiError::internal)?
        .get(0);
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": id, "organization_id": org, "name": name, "token": token,
                    "token_note": "shown once; fleetflow keeps only its SHA-256"}),
        ),
    ))
}
