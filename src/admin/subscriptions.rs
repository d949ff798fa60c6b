//! `/api/v1/products/{id}/mqtt-config/subscriptions`: list, create, edit (enable/disable) and
//! delete a product's subscriptions. Topic filters and action arrays are validated on save,
//! with the offending field named (`actions[1].type`). Every change is announced by the
//! table's trigger, and the running source takes it in place without reconnecting.

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::params::{product, validate_filter};
use super::{AdminState, ApiError};
use fleetflow_actors::subscriptions::model::{mask_secrets, parse_actions, restore_masked};

const COLUMNS: &str = "id, name, topic, enabled, description, actions, messages_received, actions_executed, actions_failed, last_message_at, created_at, updated_at";

/// A subscription as the API shows it.
pub fn to_json(r: &tokio_postgres::Row) -> Value {
    json!({
        "id": r.get::<_, i64>(0),
        "name": r.get::<_, String>(1),
        "topic": r.get::<_, String>(2),
        "enabled": r.get::<_, bool>(3),
        "description": r.get::<_, Option<String>>(4),
        "actions": mask_secrets(&r.get::<_, Value>(5)),
        "messages_received": r.get::<_, i64>(6),
        "actions_executed": r.get::<_, i64>(7),
        "actions_failed": r.get::<_, i64>(8),
        "last_message_at": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(9),
        "created_at": r.get::<_, chrono::DateTime<chrono::Utc>>(10),
        "updated_at": r.get::<_, chrono::DateTime<chrono::Utc>>(11),
    })
}

/// The subscriptions of a config, oldest first.
pub async fn list_for(
    c: &deadpool_postgres::Client,
    config_id: i64,
) -> Result<Vec<Value>, ApiError> {
    Ok(c.query(
        &format!("SELECT {COLUMNS} FROM mqtt_subscriptions WHERE mqtt_config_id = $1 ORDER BY id"),
        &[&config_id],
    )
    .await
    .map_err(ApiError::internal)?
    .iter()
    .map(to_json)
    .collect())
}

/// POST and PUT bodies: every field optional on PUT; `name`, `topic` and `actions` required
/// on POST.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    name: Option<String>,
    topic: Option<String>,
    enabled: Option<bool>,
    description: Option<String>,
    actions: Option<Value>,
}

async fn config_id(c: &deadpool_postgres::Client, product_id: &str) -> Result<i64, ApiError> {
    c.query_opt(
        "SELECT id FROM mqtt_configs WHERE product_id = $1",
        &[&product_id],
    )
    .await
    .map_err(ApiError::internal)?
    .map(|r| r.get(0))
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            format!("product {product_id} has no MQTT config; PUT one first"),
        )
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_field(
            "name",
            "name must be 1-64 characters without control characters",
        ));
    }
    Ok(())
}

fn check_topic(topic: &str) -> Result<(), ApiError> {
    validate_filter(topic).map_err(|m| ApiError::bad_field("topic", m))?;
    if topic.starts_with("$share/") {
        return Err(ApiError::bad_field(
            "topic",
            "give the plain filter; shared subscriptions are set with use_shared/shared_group on the config",
        ));
    }
    Ok(())
}

fn check_actions(actions: &Value, topic: &str) -> Result<(), ApiError> {
    parse_actions(actions, topic)
        .map(|_| ())
        .map_err(|e| ApiError::bad_field(&e.field, e.message))
}

fn body_of(
    body: Result<Json<SubscriptionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<SubscriptionBody, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad_field("body", e.body_text()))
}

fn conflict_or_internal(e: tokio_postgres::Error, name: &str) -> ApiError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        let mut err = ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("a subscription named {name:?} already exists for this product"),
        );
        err.field = Some("name".into());
        err
    } else {
        ApiError::internal(e)
    }
}

/// `GET .../subscriptions`
pub async fn list(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let product_id = product(&raw)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let id = config_id(&c, &product_id).await?;
    let subs = list_for(&c, id).await?;
    Ok(Json(json!({
        "product_id": product_id,
        // With no subscriptions the product runs the camera profile on its prefix.
        "default_profile_active": subs.is_empty(),
        "subscriptions": subs,
    })))
}

/// `POST .../subscriptions`: 201 with the new subscription.
pub async fn create(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    body: Result<Json<SubscriptionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let product_id = product(&raw)?;
    let b = body_of(body)?;
    let name = b
        .name
        .ok_or_else(|| ApiError::bad_field("name", "name is required"))?;
    check_name(&name)?;
    let topic = b
        .topic
        .ok_or_else(|| ApiError::bad_field("topic", "topic is required"))?;
    check_topic(&topic)?;
    let actions = b
        .actions
        .ok_or_else(|| ApiError::bad_field("actions", "actions is required"))?;
    check_actions(&actions, &topic)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let id = config_id(&c, &product_id).await?;
    let r = c
        .query_one(
            &format!(
                "INSERT INTO mqtt_subscriptions (mqtt_config_id, name, topic, enabled, description, actions)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
            ),
            &[&id, &name, &topic, &b.enabled.unwrap_or(true), &b.description, &actions],
        )
        .await
        .map_err(|e| conflict_or_internal(e, &name))?;
    Ok((StatusCode::CREATED, Json(to_json(&r))))
}

/// `PUT .../subscriptions/{sub_id}`: edit any field (for example `{"enabled": false}`).
pub async fn update(
    State(s): State<AdminState>,
    UrlPath((raw, sub_id)): UrlPath<(String, String)>,
    body: Result<Json<SubscriptionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let product_id = product(&raw)?;
    let sub_id = parse_id(&sub_id)?;
    let b = body_of(body)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let cfg = config_id(&c, &product_id).await?;
    let current = c
        .query_opt(
            "SELECT name, topic, actions FROM mqtt_subscriptions WHERE id = $1 AND mqtt_config_id = $2",
            &[&sub_id, &cfg],
        )
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| not_found(sub_id, &product_id))?;
    let name = b.name.unwrap_or_else(|| current.get(0));
    check_name(&name)?;
    let topic = b.topic.unwrap_or_else(|| current.get(1));
    check_topic(&topic)?;
    let stored: Value = current.get(2);
    let actions: Value = match b.actions {
        Some(mut a) => {
            restore_masked(&mut a, &stored);
            a
        }
        None => stored,
    };
    check_actions(&actions, &topic)?;
    let r = c
        .query_one(
            &format!(
                "UPDATE mqtt_subscriptions SET name = $3, topic = $4, actions = $5,
                   enabled = COALESCE($6, enabled), description = COALESCE($7, description)
                 WHERE id = $1 AND mqtt_config_id = $2 RETURNING {COLUMNS}"
            ),
            &[
                &sub_id,
                &cfg,
                &name,
                &topic,
                &actions,
                &b.enabled,
                &b.description,
            ],
        )
        .await
        .map_err(|e| conflict_or_internal(e, &name))?;
    Ok(Json(to_json(&r)))
}

/// `DELETE .../subscriptions/{sub_id}`: 204.
pub async fn delete(
    State(s): State<AdminState>,
    UrlPath((raw, sub_id)): UrlPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let product_id = product(&raw)?;
    let sub_id = parse_id(&sub_id)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let cfg = config_id(&c, &product_id).await?;
    let n = c
        .execute(
            "DELETE FROM mqtt_subscriptions WHERE id = $1 AND mqtt_config_id = $2",
            &[&sub_id, &cfg],
        )
        .await
        .map_err(ApiError::internal)?;
    if n == 0 {
        return Err(not_found(sub_id, &product_id));
    }
    Ok(StatusCode::NO_CONTENT)
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad_field("sub_id", "sub_id is a positive integer"))
}

fn not_found(sub_id: i64, product_id: &str) -> ApiError {
    ApiError::not_found(format!("product {product_id} has no subscription {sub_id}"))
}
