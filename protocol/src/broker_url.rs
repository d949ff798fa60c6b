//! Broker URLs as pure parsing: `mqtt://` (TCP), `mqtts://` (TLS), `ws://` and `wss://`
//! (websockets), with `tcp://` and `ssl://` accepted as `mqtt://` and `mqtts://`. The engine's
//! transports (`fleetflow_actors::transport`) and the simulator read URLs through this one parser.

/// How the connection is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain TCP.
    Mqtt,
    /// TLS over TCP.
    Mqtts,
    /// Websockets.
    Ws,
    /// Websockets over TLS.
    Wss,
}

impl Scheme {
    /// The URL scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    /// Whether it uses TLS.
    pub fn tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }

    /// The port a URL without one dials.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Transport.
    pub scheme: Scheme,
    /// Host name or address.
    pub host: String,
    /// Port (the scheme's default when absent).
    pub port: u16,
    /// Websocket path (default `/mqtt`); empty for TCP.
    pub path: String,
}

impl BrokerUrl {
    /// The address rumqttc dials: `host` for TCP and TLS, the whole URL for websockets.
    pub fn dial_address(&self) -> String {
        match self.scheme {
            Scheme::Mqtt | Scheme::Mqtts => self.host.clone(),
            Scheme::Ws | Scheme::Wss => format!(
                "{}://{}:{}{}",
                self.scheme.as_str(),
                self.host,
                self.port,
                self.path
            ),
        }
    }
}

/// A URL that is not one the engine can dial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker URL {0:?} must look like mqtt://host:port, mqtts://host:port, ws://host:port/path or wss://host:port/path")]
pub struct BadBrokerUrl(pub String);

/// Parses a broker URL (`tcp://` and `ssl://` are accepted as `mqtt://` and `mqtts://`).
pub fn parse(url: &str) -> Result<BrokerUrl, BadBrokerUrl> {
    let bad = || BadBrokerUrl(url.into());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme {
        "mqtt" | "tcp" => Scheme::Mqtt,
        "mqtts" | "ssl" => Scheme::Mqtts,
        "ws" => Scheme::Ws,
        "wss" => Scheme::Wss,
        _ => return Err(bad()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
        None => (authority, scheme.default_port()),
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains('@') || port == 0 {
        return Err(bad());
    }
    let path = match scheme {
        Scheme::Ws | Scheme::Wss if path.is_empty() || path == "/" => "/mqtt".to_string(),
        Scheme::Ws | Scheme::Wss => path.to_string(),
        _ if path.is_empty() || path == "/" => String::new(),
        _ => return Err(bad()),
    };
    Ok(BrokerUrl {
        scheme,
        host: host.to_string(),
        port,
        path,
    })
}
