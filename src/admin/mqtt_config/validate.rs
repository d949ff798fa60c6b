//! The body of `PUT` (and the connection test) checked field by field, in a fixed order, into a
//! [`Valid`] config.

use serde::Deserialize;
use serde_json::{Map, Value};

use fleetflow_protocol::topic::pattern_filter;

use super::super::params::validate_filter;
use super::super::ApiError;

/// The PUT (and test) body. Absent fields take their defaults; an absent or `"***"` password
/// keeps the stored one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigBody {
    host: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    use_tls: Option<bool>,
    verify_cert: Option<bool>,
    username: Option<String>,
    password: Option<String>,
    client_id: Option<String>,
    keep_alive_secs: Option<i64>,
    clean_session: Option<bool>,
    prefix: Option<String>,
    pattern: Option<String>,
    use_shared: Option<bool>,
    shared_group: Option<String>,
    qos: Option<i64>,
    enabled: Option<bool>,
    ca_cert_pem: Option<String>,
    ws_path: Option<String>,
    /// The MQTT protocol version the source speaks: `"5"` (the default) or `"3.1.1"`.
    protocol_version: Option<String>,
    /// The company (tenant) that owns this product's devices: written on their rows, for
    /// row-level security. A positive integer; absent or null for none.
    company_id: Option<i64>,
    /// The GXP firmware profile's settings for this product (nack_topic, next_wake_format,
    /// gas_unit, resend_whole_image_after_retries, nack_max_bytes); absent keeps the file's.
    gxp: Option<Value>,
}

/// The old config API's nested sections; their fields join the flat body.
const SECTIONS: [&str; 3] = ["broker", "connection", "topics"];

impl ConfigBody {
    /// Reads today's flat body or the old nested one (`broker`, `connection`, `topics`, and a
    /// top-level `keep_alive`), naming the first bad field. A field given twice is refused.
    pub fn from_json(body: Value) -> Result<Self, ApiError> {
        let flat = flatten(body)?;
        serde_json::from_value(Value::Object(flat))
            .map_err(|e| ApiError::bad_field("body", e.to_string()))
    }

    /// Whether the body names a broker (else a connection test uses the saved config).
    pub(super) fn names_a_broker(&self) -> bool {
        self.host.is_some()
    }

    /// Whether the stored password stays (none given, blank as in the old API, or the mask
    /// `"***"`).
    pub(super) fn keeps_stored_password(&self) -> bool {
        matches!(self.password.as_deref(), None | Some("" | "***"))
    }
}

/// The nested sections' fields moved to the top level, `keep_alive` renamed `keep_alive_secs`.
fn flatten(body: Value) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(mut top) = body else {
        return Err(ApiError::bad_field(
            "body",
            "the body must be a JSON object",
        ));
    };
    let mut flat = Map::new();
    for section in SECTIONS {
        match top.remove(section) {
            None => {}
            Some(Value::Object(fields)) => {
                for (k, v) in fields {
                    put(&mut flat, &k, v, &format!("{section}.{k}"))?;
                }
            }
            Some(_) => {
                return Err(ApiError::bad_field(
                    section,
                    format!("{section} must be an object"),
                ))
            }
        }
    }
    for (k, v) in top {
        put(&mut flat, &k, v, &k)?;
    }
    Ok(flat)
}

/// Adds one field, under its current name; refuses a second value for it.
fn put(flat: &mut Map<String, Value>, key: &str, v: Value, path: &str) -> Result<(), ApiError> {
    let key = match key {
        "keep_alive" => "keep_alive_secs",
        k => k,
    };
    if flat.insert(key.to_string(), v).is_some() {
        return Err(ApiError::bad_field(path, format!("{key} is given twice")));
    }
    Ok(())
}

/// A validated config ready to store or test.
pub(super) struct Valid {
    pub(super) host: String,
    pub(super) port: i32,
    pub(super) protocol: String,
    pub(super) use_tls: bool,
    pub(super) verify_cert: bool,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) client_id: String,
    pub(super) keep_alive_secs: i32,
    pub(super) clean_session: bool,
    pub(super) prefix: String,
    pub(super) pattern: Option<String>,
    pub(super) use_shared: bool,
    pub(super) shared_group: Option<String>,
    pub(super) qos: i16,
    pub(super) enabled: bool,
    pub(super) ca_cert_pem: Option<String>,
    pub(super) ws_path: String,
    pub(super) gxp: Option<Value>,
    /// `"5"` or `"3.1.1"`.
    pub(super) protocol_version: String,
    /// Positive, when set.
    pub(super) company_id: Option<i64>,
}

/// Checks every field, the first bad one named in the 400, and fills in the defaults.
pub(super) fn validate(product_id: &str, b: ConfigBody) -> Result<Valid, ApiError> {
    let host = host(b.host)?;
    let port = port(b.port)?;
    let protocol = protocol(b.protocol)?;
    let protocol_version = protocol_version(b.protocol_version)?;
    let qos = qos(b.qos)?;
    let keep_alive_secs = keep_alive(b.keep_alive_secs)?;
    let prefix = prefix(b.prefix)?;
    if let Some(p) = &b.pattern {
        validate_filter(&pattern_filter(&prefix, p))
            .map_err(|e| ApiError::bad_field("pattern", e))?;
    }
    let use_shared = b.use_shared.unwrap_or(false);
    shared_group(b.shared_group.as_deref(), use_shared)?;
    let ca_cert_pem = ca_cert(b.ca_cert_pem)?;
    let ws_path = ws_path(b.ws_path)?;
    gxp(b.gxp.as_ref())?;
    if b.company_id.is_some_and(|c| c <= 0) {
        return Err(ApiError::bad_field(
            "company_id",
            "company_id is a positive integer",
        ));
    }
    Ok(Valid {
        company_id: b.company_id,
        protocol_version,
        gxp: b.gxp,
        ca_cert_pem,
        ws_path,
        host,
        port,
        use_tls: b
            .use_tls
            .unwrap_or(matches!(protocol.as_str(), "mqtts" | "wss")),
        protocol,
        verify_cert: b.verify_cert.unwrap_or(true),
        username: b.username.filter(|u| !u.is_empty()),
        password: b.password.filter(|p| !p.is_empty() && p != "***"),
        client_id: b
            .client_id
            .unwrap_or_else(|| format!("fleetflow-{product_id}")),
        keep_alive_secs,
        clean_session: b.clean_session.unwrap_or(false),
        prefix,
        pattern: b.pattern,
        use_shared,
        shared_group: b.shared_group,
        qos,
        enabled: b.enabled.unwrap_or(true),
    })
}

/// Required: a hostname or IP address.
fn host(host: Option<String>) -> Result<String, ApiError> {
    let host = host.ok_or_else(|| ApiError::bad_field("host", "host is required"))?;
    if host.is_empty()
        || host.len() > 253
        || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err(ApiError::bad_field(
            "host",
            "host must be a hostname or IP address",
        ));
    }
    Ok(host)
}

/// 1..=65535, default 1883.
fn port(port: Option<i64>) -> Result<i32, ApiError> {
    let port = port.unwrap_or(1883);
    if !(1..=65_535).contains(&port) {
        return Err(ApiError::bad_field(
            "port",
            "port must be between 1 and 65535",
        ));
    }
    Ok(port as i32)
}

/// `mqtt` (the default), `mqtts`, `ws` or `wss`.
fn protocol(protocol: Option<String>) -> Result<String, ApiError> {
    let protocol = protocol.unwrap_or_else(|| "mqtt".into());
    if !["mqtt", "mqtts", "ws", "wss"].contains(&protocol.as_str()) {
        return Err(ApiError::bad_field(
            "protocol",
            "protocol must be one of mqtt, mqtts, ws, wss",
        ));
    }
    Ok(protocol)
}

/// `"5"` (the default) or `"3.1.1"`.
fn protocol_version(v: Option<String>) -> Result<String, ApiError> {
    match v
        .as_deref()
        .map(fleetflow_actors::config::MqttVersion::parse)
    {
        None => Ok("5".into()),
        Some(Some(v)) => Ok(v.as_str().into()),
        Some(None) => Err(ApiError::bad_field(
            "protocol_version",
            r#"protocol_version must be "5" or "3.1.1""#,
        )),
    }
}

/// 0, 1 (the default) or 2.
fn qos(qos: Option<i64>) -> Result<i16, ApiError> {
    let qos = qos.unwrap_or(1);
    if !(0..=2).contains(&qos) {
        return Err(ApiError::bad_field("qos", "qos must be 0, 1 or 2"));
    }
    Ok(qos as i16)
}

/// 5..=3600 seconds, default 30.
fn keep_alive(secs: Option<i64>) -> Result<i32, ApiError> {
    let secs = secs.unwrap_or(30);
    if !(5..=3600).contains(&secs) {
        return Err(ApiError::bad_field(
            "keep_alive_secs",
            "keep_alive_secs must be between 5 and 3600",
        ));
    }
    Ok(secs as i32)
}

/// The topic prefix, default `ESP32CAM`: no wildcards, no trailing `/`. A leading `/` (the old
/// API's `/v3/applications`) is an empty first level, which MQTT allows.
fn prefix(prefix: Option<String>) -> Result<String, ApiError> {
    let prefix = prefix.unwrap_or_else(|| "ESP32CAM".into());
    if prefix.trim_start_matches('/').is_empty()
        || prefix.contains(['+', '#', '\0'])
        || prefix.ends_with('/')
    {
        return Err(ApiError::bad_field(
            "prefix",
            "prefix must be non-empty, without wildcards or a trailing '/'",
        ));
    }
    Ok(prefix)
}

/// `[A-Za-z0-9_-]+` when given; required when `use_shared` is.
fn shared_group(group: Option<&str>, use_shared: bool) -> Result<(), ApiError> {
    match group {
        Some(g)
            if g.is_empty()
                || !g
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') =>
        {
            Err(ApiError::bad_field(
                "shared_group",
                "shared_group must be [A-Za-z0-9_-]+",
            ))
        }
        None if use_shared => Err(ApiError::bad_field(
            "shared_group",
            "shared_group is required when use_shared is true",
        )),
        _ => Ok(()),
    }
}

/// A PEM the TLS stack accepts; blank is none.
fn ca_cert(pem: Option<String>) -> Result<Option<String>, ApiError> {
    let pem = pem.filter(|p| !p.trim().is_empty());
    if let Some(pem) = &pem {
        fleetflow_actors::transport::tls_config(Some(pem.as_bytes()), true)
            .map_err(|e| ApiError::bad_field("ca_cert_pem", e))?;
    }
    Ok(pem)
}

/// The WebSocket path, default `/mqtt`.
fn ws_path(path: Option<String>) -> Result<String, ApiError> {
    let path = path.unwrap_or_else(|| "/mqtt".into());
    if !path.starts_with('/')
        || path.len() > 256
        || path.contains(|c: char| c.is_whitespace() || c == '?' || c == '#')
    {
        return Err(ApiError::bad_field(
            "ws_path",
            "ws_path must start with '/' and hold no spaces, '?' or '#'",
        ));
    }
    Ok(path)
}

/// The GXP profile settings parse, with a NACK size the firmware can take.
fn gxp(gxp: Option<&Value>) -> Result<(), ApiError> {
    let Some(g) = gxp else { return Ok(()) };
    let parsed: fleetflow_protocol::gxp::GxpSettings =
        serde_json::from_value(g.clone()).map_err(|e| ApiError::bad_field("gxp", e))?;
    if !(256..=65_535).contains(&parsed.nack_max_bytes) {
        return Err(ApiError::bad_field(
            "gxp",
            "gxp.nack_max_bytes must be between 256 and 65535",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> ConfigBody {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_body_with_only_a_host_takes_every_default() {
        let v = validate("p1", body(serde_json::json!({"host": "broker.local"}))).unwrap();
        assert_eq!(
            (v.port, v.protocol.as_str(), v.use_tls),
            (1883, "mqtt", false)
        );
        assert_eq!((v.qos, v.keep_alive_secs, v.enabled), (1, 30, true));
        assert_eq!(
            (v.prefix.as_str(), v.ws_path.as_str()),
            ("ESP32CAM", "/mqtt")
        );
        assert_eq!(v.client_id, "fleetflow-p1");
        assert_eq!(v.protocol_version, "5");
        assert!(v.verify_cert && !v.clean_session && !v.use_shared);
    }

    #[test]
    fn the_first_bad_field_in_check_order_is_the_one_named() {
        let field = |j| validate("p", body(j)).err().unwrap().field.unwrap();
        assert_eq!(field(serde_json::json!({})), "host");
        assert_eq!(
            field(serde_json::json!({"host": "h", "port": 0, "qos": 3})),
            "port"
        );
        assert_eq!(
            field(serde_json::json!({"host": "h", "qos": 3, "prefix": "#"})),
            "qos"
        );
        assert_eq!(
            field(serde_json::json!({"host": "h", "use_shared": true})),
            "shared_group"
        );
        assert_eq!(
            field(serde_json::json!({"host": "h", "shared_group": "a b"})),
            "shared_group"
        );
        assert_eq!(
            field(serde_json::json!({"host": "h", "pattern": "a/#/b"})),
            "pattern"
        );
        assert_eq!(
            field(serde_json::json!({"host": "h", "ws_path": "mqtt"})),
            "ws_path"
        );
        assert_eq!(
            field(serde_json::json!({"host": "h", "protocol_version": "4"})),
            "protocol_version"
        );
    }

    #[test]
    fn the_protocol_version_is_read_flat_and_from_the_old_connection_section() {
        let flat = ConfigBody::from_json(serde_json::json!(
            {"host": "h", "protocol_version": "3.1.1"}
        ))
        .unwrap();
        assert_eq!(validate("p", flat).unwrap().protocol_version, "3.1.1");
        let nested = ConfigBody::from_json(serde_json::json!(
            {"broker": {"host": "h"}, "connection": {"protocol_version": "3.1.1", "keep_alive": 60}}
        ))
        .unwrap();
        let v = validate("p", nested).unwrap();
        assert_eq!(
            (v.protocol_version.as_str(), v.keep_alive_secs),
            ("3.1.1", 60)
        );
    }
}
