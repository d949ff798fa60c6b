//! The broker URL the simulator binaries dial: plain TCP only (`mqtt://` or `tcp://`).
//!
//! The same rules as the engine's plain-TCP source URL (`fleetflow_actors::source::parse_url`),
//! kept here so that the simulator does not depend on the engine's runtime crate.

/// The port a URL without one dials.
const DEFAULT_PORT: u16 = 1883;

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
    let bad = || UrlError::BadUrl(url.into());
    let rest = match url.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => rest,
        _ => return Err(bad()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
        None => (authority, DEFAULT_PORT),
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains('@') || port == 0 || !(path.is_empty() || path == "/") {
        return Err(bad());
    }
    Ok((host.to_string(), port))
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
