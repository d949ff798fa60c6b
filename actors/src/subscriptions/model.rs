//! Subscription actions as stored in `mqtt_subscriptions.actions` (a JSON array), parsed and
//! validated in one place: the API rejects a bad array on save, naming the field
//! (`actions[1].type`), and the engine compiles the same array when it loads a source.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The one device profile this version implements (the camera protocol, `docs/protocol.md`).
pub const GXP_CAMERA: &str = "gxp-camera";

/// Tables a `store_json` action may write.
pub const STORE_JSON_TABLES: &[&str] = &["telemetry"];

/// Most messages a webhook action holds (each holds its broker ack until delivered, so this
/// stays well under the connection's receive maximum).
pub const MAX_WEBHOOK_QUEUE: usize = 1000;

/// Longest topic a `republish` action (or the publish API) may name, in bytes.
pub const MAX_PUBLISH_TOPIC_BYTES: usize = 1024;

/// What happens to a message that matches a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Hand the message to the device actors (the camera protocol).
    DeviceProfile,
    /// Insert a `telemetry` row with the device id taken from a topic level.
    StoreJson {
        /// The topic level (0-based) holding the device id; `None` means the first `+` level of
        /// the subscription's filter, or level 1.
        device_id_level: Option<usize>,
    },
    /// Publish the payload again on another topic of the same connection. `{device_id}` in the
    /// topic is replaced by the message's device id.
    Republish {
        /// Target topic template.
        topic: String,
        /// 0 or 1.
        qos: u8,
        /// Retain flag.
        retain: bool,
    },
    /// POST the message as JSON to a URL.
    Webhook(WebhookSpec),
}

/// A webhook action's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSpec {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Per-attempt timeout (default 5000 ms).
    pub timeout_ms: u64,
    /// Attempts after the first (default 3), with doubling backoff from 200 ms.
    pub retries: u32,
    /// Messages waiting for delivery before new ones are refused and counted as failed
    /// (default 100, at most [`MAX_WEBHOOK_QUEUE`]).
    pub queue: usize,
    /// Extra request headers (for example an `Authorization` for the receiver).
    pub headers: BTreeMap<String, String>,
}

impl Action {
    /// The action's `type`, also its metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::DeviceProfile => "device_profile",
            Action::StoreJson { .. } => "store_json",
            Action::Republish { .. } => "republish",
            Action::Webhook(_) => "webhook",
        }
    }
}

/// A rejected field: its path (`actions[0].url`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path of the field.
    pub field: String,
    /// Why it was rejected.
    pub message: String,
}

fn bad(field: String, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// Parses and validates an `actions` array for a subscription on `filter`.
pub fn parse_actions(value: &Value, filter: &str) -> Result<Vec<Action>, FieldError> {
    let Some(items) = value.as_array() else {
        return Err(bad("actions".into(), "actions must be a JSON array"));
    };
    if items.is_empty() {
        return Err(bad(
            "actions".into(),
            "actions must name at least one action",
        ));
    }
    if items.len() > 16 {
        return Err(bad("actions".into(), "at most 16 actions per subscription"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| parse_action(i, v, filter))
        .collect()
}

fn parse_action(i: usize, v: &Value, filter: &str) -> Result<Action, FieldError> {
    let at = |k: &str| format!("actions[{i}].{k}");
    let Some(obj) = v.as_object() else {
        return Err(bad(format!("actions[{i}]"), "an action is a JSON object"));
    };
    let kind = obj
        .get("type")
        .ok_or_else(|| bad(at("type"), "type is required"))?
        .as_str()
        .ok_or_else(|| bad(at("type"), "type must be a string"))?;
    let allowed: &[&str] = match kind {
        "device_profile" => &["type", "profile"],
        "store_json" => &["type", "table", "device_id_level"],
        "republish" => &["type", "topic", "qos", "retain"],
        "webhook" => &["type", "url", "timeout_ms", "retries", "queue", "headers"],
        other => {
            return Err(bad(
                at("type"),
                format!("unknown action type {other:?}; expected one of device_profile, store_json, republish, webhook"),
            ))
        }
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(at(k), format!("unknown field for a {kind} action")));
    }
    match kind {
        "device_profile" => parse_device_profile(obj, &at),
        "store_json" => parse_store_json(obj, &at, filter),
        "republish" => parse_republish(obj, &at, filter),
        _ => parse_webhook(obj, &at),
    }
}

/// An action's JSON object.
type Fields = Map<String, Value>;
/// Names a field of the action being parsed, for errors.
type At<'a> = &'a dyn Fn(&str) -> String;

/// A `device_profile` action: the profile, when given, must be the GXP camera.
fn parse_device_profile(obj: &Fields, at: At) -> Result<Action, FieldError> {
    let profile = str_field(obj, "profile", at)?.unwrap_or(GXP_CAMERA);
    if profile != GXP_CAMERA {
        return Err(bad(
            at("profile"),
            format!("unknown device profile {profile:?}; this version has {GXP_CAMERA:?}"),
        ));
    }
    Ok(Action::DeviceProfile)
}

/// A `store_json` action: a known table, and a device id level the filter can supply.
fn parse_store_json(obj: &Fields, at: At, filter: &str) -> Result<Action, FieldError> {
    let table =
        str_field(obj, "table", at)?.ok_or_else(|| bad(at("table"), "table is required"))?;
    if !STORE_JSON_TABLES.contains(&table) {
        return Err(bad(
            at("table"),
            format!("table must be one of {STORE_JSON_TABLES:?}"),
        ));
    }
    let level = int_field(obj, "device_id_level", 0, 31, at)?.map(|n| n as usize);
    if level.is_none() && !filter.split('/').any(|l| l == "+" || l == "#") {
        return Err(bad(
            at("device_id_level"),
            "the topic filter has no wildcard level to take the device id from; give device_id_level",
        ));
    }
    if let Some(l) = level {
        let levels = filter.split('/').collect::<Vec<_>>();
        if levels.last() != Some(&"#") && l >= levels.len() {
            return Err(bad(
                at("device_id_level"),
                format!("the topic filter has only {} levels", levels.len()),
            ));
        }
    }
    Ok(Action::StoreJson {
        device_id_level: level,
    })
}

/// A `republish` action: a valid target topic that does not loop back into `filter`.
fn parse_republish(obj: &Fields, at: At, filter: &str) -> Result<Action, FieldError> {
    let topic =
        str_field(obj, "topic", at)?.ok_or_else(|| bad(at("topic"), "topic is required"))?;
    validate_publish_topic(topic).map_err(|m| bad(at("topic"), m.to_string()))?;
    let sample = topic.replace("{device_id}", "x");
    if rumqttc::v5::mqttbytes::matches(&sample, filter) {
        return Err(bad(
            at("topic"),
            "the target topic matches the subscription's own filter (it would loop)",
        ));
    }
    let qos = int_field(obj, "qos", 0, 1, at)?.unwrap_or(1) as u8;
    let retain = match obj.get("retain") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad(at("retain"), "retain must be true or false")),
    };
    Ok(Action::Republish {
        topic: topic.to_string(),
        qos,
        retain,
    })
}

/// A `webhook` action: an http(s) URL with a host, valid headers, and bounded timeout,
/// retries and queue.
fn parse_webhook(obj: &Fields, at: At) -> Result<Action, FieldError> {
    let url = str_field(obj, "url", at)?.ok_or_else(|| bad(at("url"), "url is required"))?;
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(at("url"), format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(bad(
            at("url"),
            "url must be http:// or https:// with a host",
        ));
    }
    let headers = parse_headers(obj, at)?;
    Ok(Action::Webhook(WebhookSpec {
        url: url.to_string(),
        timeout_ms: int_field(obj, "timeout_ms", 100, 30_000, at)?.unwrap_or(5_000),
        retries: int_field(obj, "retries", 0, 5, at)?.unwrap_or(3) as u32,
        queue: int_field(obj, "queue", 1, MAX_WEBHOOK_QUEUE as u64, at)?.unwrap_or(100) as usize,
        headers,
    }))
}

/// A webhook's `headers`: an object of valid HTTP header names and string values.
fn parse_headers(obj: &Fields, at: At) -> Result<BTreeMap<String, String>, FieldError> {
    let mut headers = BTreeMap::new();
    match obj.get("headers") {
        None => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                let Some(v) = v.as_str() else {
                    return Err(bad(
                        at(&format!("headers.{k}")),
                        "header values are strings",
                    ));
                };
                if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(v).is_err()
                {
                    return Err(bad(at(&format!("headers.{k}")), "not a valid HTTP header"));
                }
                headers.insert(k.clone(), v.to_string());
            }
        }
        Some(_) => return Err(bad(at("headers"), "headers must be an object of strings")),
    }
    Ok(headers)
}

fn str_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<&'a str>, FieldError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(at(key), format!("{key} must be a string"))),
    }
}

fn int_field(
    obj: &Map<String, Value>,
    key: &str,
    min: u64,
    max: u64,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<u64>, FieldError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(bad(
                at(key),
                format!("{key} must be an integer between {min} and {max}"),
            )),
        },
    }
}

/// Why a topic cannot be published to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishTopicError {
    /// Empty, or longer than [`MAX_PUBLISH_TOPIC_BYTES`].
    #[error("a topic is 1 to {} bytes", MAX_PUBLISH_TOPIC_BYTES)]
    Length,
    /// It has a wildcard (`+`, `#`) or a NUL.
    #[error("a topic to publish to has no wildcards (+, #) or NUL")]
    Wildcard,
    /// A `$` system topic.
    #[error("topics starting with $ are reserved for the broker")]
    Reserved,
}

/// Checks a topic to publish to: not empty, no wildcards or NUL, at most
/// [`MAX_PUBLISH_TOPIC_BYTES`], and not a `$` system topic.
pub fn validate_publish_topic(topic: &str) -> Result<(), PublishTopicError> {
    if topic.is_empty() || topic.len() > MAX_PUBLISH_TOPIC_BYTES {
        return Err(PublishTopicError::Length);
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(PublishTopicError::Wildcard);
    }
    if topic.starts_with('$') {
        return Err(PublishTopicError::Reserved);
    }
    Ok(())
}

/// The topic level that holds the device id for a subscription on `filter`: the first `+`
/// level, else level 1 (`{prefix}/{device_id}/...`).
pub fn default_device_level(filter: &str) -> usize {
    filter.split('/').position(|l| l == "+").unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> FieldError {
        parse_actions(&v, "plant/+/telemetry").unwrap_err()
    }

    #[test]
    fn every_action_type_parses_with_defaults() {
        let a = parse_actions(
            &json!([
                {"type": "device_profile", "profile": "gxp-camera"},
                {"type": "store_json", "table": "telemetry"},
                {"type": "republish", "topic": "mirror/{device_id}"},
                {"type": "webhook", "url": "http://127.0.0.1:9/hook"}
            ]),
            "plant/+/telemetry",
        )
        .unwrap();
        assert_eq!(a[0], Action::DeviceProfile);
        assert_eq!(
            a[1],
            Action::StoreJson {
                device_id_level: None
            }
        );
        assert_eq!(
            a[2],
            Action::Republish {
                topic: "mirror/{device_id}".into(),
                qos: 1,
                retain: false
            }
        );
        let Action::Webhook(w) = &a[3] else {
            panic!("webhook expected")
        };
        assert_eq!((w.timeout_ms, w.retries, w.queue), (5000, 3, 100));
    }

    #[test]
    fn errors_name_the_offending_field() {
        assert_eq!(err(json!([{"type": "teleport"}])).field, "actions[0].type");
        assert!(err(json!([{"type": "teleport"}]))
            .message
            .contains("teleport"));
        assert_eq!(
            err(json!([{"type": "device_profile"}, {"type": "store_json", "table": "users"}]))
                .field,
            "actions[1].table"
        );
        assert_eq!(
            err(json!([{"type": "webhook", "url": "ftp://x"}])).field,
            "actions[0].url"
        );
        assert_eq!(
            err(json!([{"type": "webhook", "url": "http://x", "retries": 99}])).field,
            "actions[0].retries"
        );
        assert_eq!(
            err(json!([{"type": "republish", "topic": "a/+"}])).field,
            "actions[0].topic"
        );
        assert_eq!(
            err(json!([{"type": "republish", "topic": "a", "colour": 1}])).field,
            "actions[0].colour"
        );
        assert_eq!(err(json!({"type": "store_json"})).field, "actions");
        assert_eq!(err(json!([])).field, "actions");
        assert_eq!(
            parse_actions(
                &json!([{"type": "store_json", "table": "telemetry"}]),
                "plant/telemetry"
            )
            .unwrap_err()
            .field,
            "actions[0].device_id_level"
        );
        assert_eq!(err(json!([{"profile": "x"}])).field, "actions[0].type");
    }

    #[test]
    fn a_republish_onto_its_own_filter_is_refused() {
        let e = err(json!([{"type": "republish", "topic": "plant/{device_id}/telemetry"}]));
        assert!(e.message.contains("loop"), "{e}");
    }

    #[test]
    fn the_device_level_defaults_to_the_first_single_level_wildcard() {
        assert_eq!(default_device_level("plant/+/telemetry"), 1);
        assert_eq!(default_device_level("org_1/devices/+/data"), 2);
        assert_eq!(default_device_level("ESP32CAM/#"), 1);
    }

    #[test]
    fn publish_topics_are_checked() {
        assert!(validate_publish_topic("a/b").is_ok());
        assert!(validate_publish_topic("").is_err());
        assert!(validate_publish_topic("a/#").is_err());
        assert!(validate_publish_topic("$SYS/x").is_err());
        assert!(validate_publish_topic(&"x".repeat(1025)).is_err());
    }
}

/// What the API shows for a webhook header value.
pub const MASK: &str = "***";

/// The actions with every webhook header value replaced by [`MASK`] (they often carry
/// credentials for the receiver).
pub fn mask_secrets(actions: &Value) -> Value {
    let mut out = actions.clone();
    if let Some(items) = out.as_array_mut() {
        for a in items {
            if let Some(Value::Object(h)) = a.get_mut("headers") {
                for v in h.values_mut() {
                    *v = Value::String(MASK.into());
                }
            }
        }
    }
    out
}

/// In an edited `actions` array, puts back the stored value of every header given as
/// [`MASK`] (same action position and header name), so that a masked array read from the API
/// can be sent back unchanged.
pub fn restore_masked(new: &mut Value, stored: &Value) {
    let Some(items) = new.as_array_mut() else {
        return;
    };
    for (i, a) in items.iter_mut().enumerate() {
        let Some(Value::Object(h)) = a.get_mut("headers") else {
            continue;
        };
        for (k, v) in h.iter_mut() {
            if v.as_str() == Some(MASK) {
                if let Some(old) = stored
                    .get(i)
                    .and_then(|o| o.get("headers"))
                    .and_then(|o| o.get(k))
                {
                    *v = old.clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod mask_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn webhook_headers_are_masked_and_restored() {
        let stored = json!([{"type": "webhook", "url": "http://x", "headers": {"Authorization": "Bearer s3cret"}}]);
        let shown = mask_secrets(&stored);
        assert_eq!(shown[0]["headers"]["Authorization"], MASK);
        assert!(!shown.to_string().contains("s3cret"));
        let mut back = shown.clone();
        restore_masked(&mut back, &stored);
        assert_eq!(back, stored);
    }
}
