//! `/api/v1/organizations/{org_id}/mqtt-credentials`: generate (the password shown once, with
//! how to connect), list, revoke and rotate hosted-broker credentials. The row is written
//! before the broker client, so the reconcile loop can always tell a managed client's owner.

use std::collections::HashMap;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::params::validate_filter;
use super::super::{AdminState, ApiError};
use super::{broker_error, hosted, org_id, Caller};
use crate::hosted::credentials::{self, deprovision, provision, seal_context, set_password};
use crate::hosted::snippets::{self, SnippetInput};
use crate::hosted::Hosted;

/// `POST .../mqtt-credentials` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    description: Option<String>,
    allowed_topics: Option<Vec<String>>,
}

fn credential_json(r: &tokio_postgres::Row) -> Value {
    type Ts = Option<chrono::DateTime<chrono::Utc>>;
    json!({
        "id": r.get::<_, i64>("id"),
        "organization_id": r.get::<_, i64>("organization_id"),
        "username": r.get::<_, String>("username"),
        "allowed_topics": r.get::<_, Vec<String>>("allowed_topics"),
        "description": r.get::<_, Option<String>>("description"),
        "created_at": r.get::<_, chrono::DateTime<chrono::Utc>>("created_at"),
        "rotated_at": r.get::<_, Ts>("rotated_at"),
        "last_used_at": r.get::<_, Ts>("last_used_at"),
        "revoked_at": r.get::<_, Ts>("revoked_at"),
        "broker_synced_at": r.get::<_, Ts>("broker_synced_at"),
    })
}

const CRED_COLUMNS: &str = "id, organization_id, username, allowed_topics, description, created_at, rotated_at, last_used_at, revoked_at, broker_synced_at";

/// The connection details and snippets shown with a new password.
fn connect_info(h: &Hosted, org: i64, username: &str, password: &str) -> Value {
    let urls = h.cfg.device_urls();
    let prefix = format!("org_{org}/devices");
    let snippets = urls
        .first()
        .and_then(|u| fleetflow_actors::transport::parse_url(u).ok())
        .map(|u| {
            snippets::render(&SnippetInput {
                host: &u.host,
                port: u.port,
                tls: u.scheme.tls(),
                username,
                password,
                topic_prefix: &prefix,
            })
        });
    json!({"broker_urls": urls, "topic_prefix": prefix, "snippets": snippets})
}

fn seal(s: &AdminState, username: &str, password: &str) -> Result<Vec<u8>, ApiError> {
    let key = s.secret_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_secret_key",
            "FLEETFLOW_SECRET_KEY (or _FILE) is needed to keep hosted-broker credentials repairable",
        )
    })?;
    Ok(key.seal(password, &seal_context(username)))
}

/// `POST /api/v1/organizations/{org_id}/mqtt-credentials`: 201 with the password, once.
pub async fn create(
    State(s): State<AdminState>,
    UrlPath(params): UrlPath<HashMap<String, String>>,
    body: Option<Json<CreateBody>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let org = org_id(&params)?;
    let h = hosted(&s)?;
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let topics = allowed_topics(h, org, b.allowed_topics)?;
    if b.description.as_ref().is_some_and(|d| d.len() > 200) {
        return Err(ApiError::bad_field("description", "at most 200 characters"));
    }
    let username = credentials::new_username(&h.cfg.client_prefix);
    let password = credentials::new_password();
    let hash = credentials::hash_blocking(password.clone())
        .await
        .map_err(ApiError::internal)?;
    let sealed = seal(&s, &username, &password)?;
    // The row first: the reconcile loop deletes managed broker clients that have none.
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let row = c
        .query_one(
            &format!(
                "INSERT INTO mqtt_credentials (organization_id, username, password_hash, password_sealed, allowed_topics, description)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {CRED_COLUMNS}"
            ),
            &[&org, &username, &hash, &sealed, &topics, &b.description],
        )
        .await
        .map_err(ApiError::internal)?;
    provision_or_withdraw(&c, h, &username, &password, &topics).await?;
    confirm_still_active(&c, h, &username).await?;
    tracing::info!(organization = org, username = %username, "hosted-broker credential created");
    let note = "shown once; fleetflow keeps only a hash";
    let out = shown_once(&row, h, org, &username, &password, note);
    Ok((StatusCode::CREATED, Json(out)))
}

/// The topic filters of a new credential: the organisation's default, or 1 to 16 filters
/// under `org_{id}/` (a 400 names the first bad one).
fn allowed_topics(
    h: &Hosted,
    org: i64,
    given: Option<Vec<String>>,
) -> Result<Vec<String>, ApiError> {
    let Some(topics) = given else {
        return Ok(vec![h.cfg.topics_for(org)]);
    };
    if topics.is_empty() || topics.len() > 16 {
        return Err(ApiError::bad_field(
            "allowed_topics",
            "allowed_topics holds 1 to 16 topic filters",
        ));
    }
    let own = format!("org_{org}/");
    for (i, f) in topics.iter().enumerate() {
        let field = format!("allowed_topics[{i}]");
        validate_filter(f).map_err(|e| ApiError::bad_field(&field, e))?;
        if !f.starts_with(&own) {
            return Err(ApiError::bad_field(
                &field,
                format!("a credential of organisation {org} may only use topics under {own}"),
            ));
        }
    }
    Ok(topics)
}

/// Creates the broker client; when the broker refuses, the row is revoked (the reconcile loop
/// removes whatever reached the broker) and the answer is 502.
async fn provision_or_withdraw(
    c: &deadpool_postgres::Client,
    h: &Hosted,
    username: &str,
    password: &str,
    topics: &[String],
) -> Result<(), ApiError> {
    let Err(e) = provision(&h.dynsec, username, password, topics).await else {
        return Ok(());
    };
    let _ = c
        .execute(
            "UPDATE mqtt_credentials SET revoked_at = now() WHERE username = $1",
            &[&username],
        )
        .await;
    Err(broker_error(e))
}

/// Marks the row synced unless it was revoked meanwhile; then the client just created goes
/// again and the answer is 409.
async fn confirm_still_active(
    c: &deadpool_postgres::Client,
    h: &Hosted,
    username: &str,
) -> Result<(), ApiError> {
    let still_active = c
        .query_opt(
            "UPDATE mqtt_credentials SET broker_synced_at = now() WHERE username = $1 AND revoked_at IS NULL RETURNING id",
            &[&username],
        )
        .await
        .map_err(ApiError::internal)?
        .is_some();
    if still_active {
        return Ok(());
    }
    let _ = deprovision(&h.dynsec, username).await;
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "revoked",
        "the credential was revoked while it was being created",
    ))
}

/// A credential row with its new password, a note on it, and how to connect.
fn shown_once(
    row: &tokio_postgres::Row,
    h: &Hosted,
    org: i64,
    username: &str,
    password: &str,
    note: &str,
) -> Value {
    let mut out = credential_json(row);
    out["password"] = json!(password);
    out["password_note"] = json!(note);
    if let Value::Object(extra) = connect_info(h, org, username, password) {
        out.as_object_mut().expect("object").extend(extra);
    }
    out
}

/// `GET /api/v1/organizations/{org_id}/mqtt-credentials`: never a password or hash. An
/// organisation token reads under the tenant role (row-level security).
pub async fn list(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    UrlPath(params): UrlPath<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let org = org_id(&params)?;
    let mut c = s.pool.get().await.map_err(ApiError::internal)?;
    let tx = c.transaction().await.map_err(ApiError::internal)?;
    super::as_caller(&tx, caller).await?;
    let rows = tx
        .query(
            &format!("SELECT {CRED_COLUMNS} FROM mqtt_credentials WHERE organization_id = $1 ORDER BY id"),
            &[&org],
        )
        .await
        .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)?;
    Ok(Json(json!({
        "organization_id": org,
        "credentials": rows.iter().map(credential_json).collect::<Vec<_>>(),
    })))
}

fn credential_id(params: &HashMap<String, String>) -> Result<i64, ApiError> {
    params
        .get("credential_id")
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad_field("credential_id", "credential_id is a positive integer"))
}

async fn active_username(
    c: &deadpool_postgres::Client,
    org: i64,
    id: i64,
) -> Result<String, ApiError> {
    c.query_opt(
        "SELECT username FROM mqtt_credentials WHERE id = $1 AND organization_id = $2 AND revoked_at IS NULL",
        &[&id, &org],
    )
    .await
    .map_err(ApiError::internal)?
    .map(|r| r.get(0))
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "organisation {org} has no active credential {id}"
        ))
    })
}

/// `DELETE .../mqtt-credentials/{credential_id}`: revokes; the broker client is deleted and
/// its connections dropped.
pub async fn revoke(
    State(s): State<AdminState>,
    UrlPath(params): UrlPath<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let org = org_id(&params)?;
    let id = credential_id(&params)?;
    let h = hosted(&s)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let username = active_username(&c, org, id).await?;
    let row = c
        .query_one(
            &format!("UPDATE mqtt_credentials SET revoked_at = now() WHERE id = $1 RETURNING {CRED_COLUMNS}"),
            &[&id],
        )
        .await
        .map_err(ApiError::internal)?;
    // Recorded first: should the broker be unreachable now, the reconcile loop deletes the
    // client as soon as it can.
    deprovision(&h.dynsec, &username)
        .await
        .map_err(broker_error)?;
    tracing::info!(organization = org, username = %username, "hosted-broker credential revoked");
    Ok(Json(credential_json(&row)))
}

/// `POST .../mqtt-credentials/{credential_id}/rotate`: a new password, shown once.
pub async fn rotate(
    State(s): State<AdminState>,
    UrlPath(params): UrlPath<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let org = org_id(&params)?;
    let id = credential_id(&params)?;
    let h = hosted(&s)?;
    let mut c = s.pool.get().await.map_err(ApiError::internal)?;
    let username = active_username(&c, org, id).await?;
    let password = credentials::new_password();
    let hash = credentials::hash_blocking(password.clone())
        .await
        .map_err(ApiError::internal)?;
    let sealed = seal(&s, &username, &password)?;
    // One transaction holding the row across the broker call: concurrent rotations and
    // revocations of this credential wait, and a failed broker call leaves the row unchanged.
    let tx = c.transaction().await.map_err(ApiError::internal)?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE mqtt_credentials SET password_hash = $2, password_sealed = $3, rotated_at = now(), broker_synced_at = now()
                 WHERE id = $1 AND revoked_at IS NULL RETURNING {CRED_COLUMNS}"
            ),
            &[&id, &hash, &sealed],
        )
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::not_found(format!("organisation {org} has no active credential {id}"))
        })?;
    set_password(&h.dynsec, &username, &password)
        .await
        .map_err(broker_error)?;
    tx.commit().await.map_err(ApiError::internal)?;
    tracing::info!(organization = org, username = %username, "hosted-broker credential rotated");
    let note = "shown once; the previous password no longer works";
    Ok(Json(shown_once(&row, h, org, &username, &password, note)))
}
