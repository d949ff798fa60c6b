//! The broker URL the simulator binaries dial: plain TCP only (`mqtt://` or `tcp://`), read by
//! the engine's own parser (`fleetflow_protocol::broker_url`).

use fleetflow_protocol::broker_url::{self, Scheme};

/// A broker URL the simulator cannot dial.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not `mqtt://host[:port]` (or `tcp://`): another scheme, no host, a user, port 0 or a path.
    #[error("mqtt.url {0:?} must look like mqtt://host:port")]
    BadUrl(String),
}

/// Parses a plain-TCP `mqtt://host:port` (or `tcp://`) URL into host and port; the port defaults
/// to 1883 and an IPv6 host may be bracketed (`mqtt://[::1]:1883`).
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), UrlError> {
    match broker_url::parse(url) {
        Ok(u) if u.scheme == Scheme::Mqtt => Ok((u.host, u.port)),
        _ => Err(UrlError::BadUrl(url.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mqtt_url;

    #[test]
    fn plain_tcp_urls_give_host_and_port() {
        let ok = |u: &str| parse_mqtt_url(u).unwrap();
        assert_eq!(ok("mqtt://127.0.0.1:11883"), ("127.0.0.1".into(), 11883));
        assert_eq!(ok("tcp://broker/"), ("broker".into(), 1883));
        assert_eq!(ok("mqtt://[::1]:1884"), ("::1".into(), 1884));
    }

    #[test]
    fn other_schemes_users_paths_and_port_zero_are_refused() {
        for u in [
            "mqtts://broker:8883",
            "ws://broker/mqtt",
            "broker:1883",
            "mqtt://:1883",
            "mqtt://user@broker",
            "mqtt://broker:0",
            "mqtt://broker:x",
            "mqtt://broker/topic",
        ] {
            assert!(parse_mqtt_url(u).is_err(), "{u} accepted");
        }
    }
}
