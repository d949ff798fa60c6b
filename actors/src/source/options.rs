//! Client options from `[mqtt]` (or a product's row), for either protocol version, and
//! [`connect`], the one place that picks the client: everything past it is the same path.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::ConnectProperties;
use secrecy::ExposeSecret;

use super::events::EventLoop;
use super::{SourceError, REQUEST_CHANNEL_CAPACITY};
use crate::config::{MqttConfig, MqttVersion};
use crate::link::MqttClient;
use crate::transport;

/// The client and event loop of a new connection, of the configured protocol version, with a
/// request channel of `capacity`.
pub fn connect(cfg: &MqttConfig, capacity: usize) -> Result<(MqttClient, EventLoop), SourceError> {
    Ok(match cfg.protocol_version {
        MqttVersion::V5 => {
            let (c, el) = rumqttc::v5::AsyncClient::new(options(cfg)?, capacity);
            (MqttClient::V5(c), EventLoop::V5(Box::new(el)))
        }
        MqttVersion::V311 => {
            let (c, el) = rumqttc::AsyncClient::new(options_v311(cfg)?, capacity);
            (MqttClient::V311(c), EventLoop::V311(Box::new(el)))
        }
    })
}

/// Builds the MQTT 5 client options from config.
pub fn options(cfg: &MqttConfig) -> Result<rumqttc::v5::MqttOptions, SourceError> {
    let url = transport::parse_url(&cfg.url).map_err(transport::TransportError::from)?;
    let mut o = rumqttc::v5::MqttOptions::new(cfg.client_id.clone(), url.dial_address(), url.port);
    if let Some(t) = tls_transport(cfg, &url)? {
        o.set_transport(t);
    }
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(5)));
    o.set_clean_start(cfg.clean_start);
    o.set_manual_acks(true);
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(cfg.session_expiry_secs);
    props.receive_maximum = Some(cfg.receive_maximum.max(1));
    props.max_packet_size = Some(cfg.max_packet_bytes);
    o.set_connect_properties(props);
    // Room for an ack for every packet id that can be in flight (65,535), whatever the broker
    // does with the receive maximum, plus ACK/NACK publishes. A broker that reuses packet ids
    // can overfill it; acks are then held in order (`link.rs`).
    o.set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
    if let Some(user) = &cfg.username {
        o.set_credentials(user.clone(), password(cfg)?.unwrap_or_default());
    }
    Ok(o)
}

/// Builds the MQTT 3.1.1 client options from config: the same manual acks and session
/// (`clean_start` is the clean-session flag). 3.1.1 has no session expiry or receive maximum
/// to send: the broker's own settings apply.
pub fn options_v311(cfg: &MqttConfig) -> Result<rumqttc::MqttOptions, SourceError> {
    let url = transport::parse_url(&cfg.url).map_err(transport::TransportError::from)?;
    let mut o = rumqttc::MqttOptions::new(cfg.client_id.clone(), url.dial_address(), url.port);
    if let Some(t) = tls_transport(cfg, &url)? {
        o.set_transport(t);
    }
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(5)));
    o.set_clean_session(cfg.clean_start);
    o.set_manual_acks(true);
    let max = cfg.max_packet_bytes as usize;
    o.set_max_packet_size(max, max);
    o.set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
    if let Some(user) = &cfg.username {
        o.set_credentials(user.clone(), password(cfg)?.unwrap_or_default());
    }
    Ok(o)
}

/// The transport for TLS and websocket URLs (`None`: plain TCP, the options' default).
fn tls_transport(
    cfg: &MqttConfig,
    url: &transport::BrokerUrl,
) -> Result<Option<rumqttc::Transport>, SourceError> {
    if url.scheme == transport::Scheme::Mqtt {
        return Ok(None);
    }
    let ca = match (&cfg.ca_pem, &cfg.ca_file) {
        (Some(pem), _) => Some(pem.as_bytes().to_vec()),
        (None, Some(f)) => Some(transport::read_ca_file(f)?),
        _ => None,
    };
    Ok(Some(transport::transport(
        url,
        ca.as_deref(),
        cfg.verify_cert,
    )?))
}

/// The password, given or read from `password_file`.
fn password(cfg: &MqttConfig) -> Result<Option<String>, SourceError> {
    Ok(match (&cfg.password, &cfg.password_file) {
        (Some(p), _) => Some(p.expose_secret().to_string()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| SourceError::PasswordFile(f.clone(), e))?
                .trim_end()
                .to_string(),
        ),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_3_1_1_source_keeps_manual_acks_and_its_session_and_takes_large_packets() {
        let cfg = MqttConfig {
            protocol_version: MqttVersion::V311,
            clean_start: false,
            ..MqttConfig::default()
        };
        let o = options_v311(&cfg).unwrap();
        assert!(o.manual_acks());
        assert!(!o.clean_session());
        assert_eq!(o.max_packet_size(), cfg.max_packet_bytes as usize);
        assert_eq!(o.request_channel_capacity(), REQUEST_CHANNEL_CAPACITY);
    }
}
