//! `/api/v1/organizations/{org_id}/...`: hosted-broker credentials (generate, list, revoke,
//! rotate), organisation tokens, and publishing limited to the organisation's topics.
//!
//! These routes take the admin token, or an organisation token (created by an admin, stored as
//! a SHA-256 hash) for that organisation only. Creating organisation tokens needs the admin
//! token.

use std::collections::HashMap;

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::auth::token_matches;
use super::{AdminState, ApiError};
use crate::hosted::credentials::{self, deprovision, provision, seal_context, set_password};
use crate::hosted::snippets::{self, SnippetInput};
use crate::hosted::Hosted;
use fleetflow_actors::subscriptions::model::validate_publish_topic;

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
    let caller = if s
        .token
        .as_deref()
        .is_some_and(|t| token_matches(t, &presented))
    {
        Some(Caller::Admin)
    } else if presented.starts_with("fft_") {
        match lookup_org_token(&s, &presented).await {
            Ok(Some(o)) if o == org => Some(Caller::Organization(o)),
            Ok(Some(_)) => {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this organisation token belongs to another organisation",
                )
                .into_response()
            }
            Ok(None) => None,
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    let Some(caller) = caller else {
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
    let hash = credentials::hash(&password).map_err(ApiError::internal)?;
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
        super::mqtt_config::validate_filter(f).map_err(|e| ApiError::bad_field(&field, e))?;
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

/// `GET /api/v1/organizations/{org_id}/mqtt-credentials`: never a password or hash.
pub async fn list(
    State(s): State<AdminState>,
    UrlPath(params): UrlPath<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let org = org_id(&params)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let rows = c
        .query(
            &format!("SELECT {CRED_COLUMNS} FROM mqtt_credentials WHERE organization_id = $1 ORDER BY id"),
            &[&org],
        )
        .await
        .map_err(ApiError::internal)?;
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
    let hash = credentials::hash(&password).map_err(ApiError::internal)?;
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

/// The body of both publish endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    topic: Option<String>,
    payload: Option<Value>,
    payload_base64: Option<String>,
    qos: Option<i64>,
    retain: Option<bool>,
}

/// A validated publish.
pub struct Publish {
    /// Topic.
    pub topic: String,
    /// Bytes.
    pub payload: Bytes,
    /// 0 or 1.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
}

/// Largest payload the publish API sends, in bytes.
pub const MAX_PUBLISH_BYTES: usize = 256 * 1024;

/// Checks a publish body: a topic without wildcards (≤ 1024 bytes), a payload given as JSON
/// (a JSON string is sent as its text) or base64, QoS 0 or 1.
pub fn validate_publish(b: PublishBody) -> Result<Publish, ApiError> {
    let topic = b
        .topic
        .ok_or_else(|| ApiError::bad_field("topic", "topic is required"))?;
    validate_publish_topic(&topic).map_err(|m| ApiError::bad_field("topic", m))?;
    let payload = match (b.payload, b.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_field(
                "payload",
                "give payload or payload_base64, not both",
            ))
        }
        (Some(Value::String(s)), None) => Bytes::from(s),
        (Some(v), None) => Bytes::from(v.to_string()),
        (None, Some(b64)) => {
            use base64::Engine as _;
            Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| ApiError::bad_field("payload_base64", e.to_string()))?,
            )
        }
        (None, None) => Bytes::new(),
    };
    if payload.len() > MAX_PUBLISH_BYTES {
        return Err(ApiError::bad_field(
            "payload",
            format!("at most {MAX_PUBLISH_BYTES} bytes"),
        ));
    }
    let qos = match b.qos.unwrap_or(1) {
        q @ (0 | 1) => q as u8,
        _ => return Err(ApiError::bad_field("qos", "qos must be 0 or 1")),
    };
    Ok(Publish {
        topic,
        payload,
        qos,
        retain: b.retain.unwrap_or(false),
    })
}

/// `POST /api/v1/organizations/{org_id}/publish`: through the hosted broker, only under
/// `org_{org_id}/`.
pub async fn publish(
    State(s): State<AdminState>,
    UrlPath(params): UrlPath<HashMap<String, String>>,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let org = org_id(&params)?;
    let Json(b) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let p = validate_publish(b)?;
    let own = format!("org_{org}/");
    if !p.topic.starts_with(&own) {
        let mut e = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("organisation {org} may only publish under {own}"),
        );
        e.field = Some("topic".into());
        return Err(e);
    }
    let h = hosted(&s)?;
    let bytes = p.payload.len();
    h.dynsec
        .publish(p.topic.clone(), p.payload, p.qos, p.retain)
        .await
        .map_err(broker_error)?;
    metrics::counter!(fleetflow_actors::metrics::MQTT_PUBLISHES_TOTAL, "kind" => "publish")
        .increment(1);
    Ok(Json(
        json!({"published": true, "topic": p.topic, "bytes": bytes, "qos": p.qos, "retain": p.retain}),
    ))
}
