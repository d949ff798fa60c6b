//! Broker URLs and transports: `mqtt://` (TCP), `mqtts://` (TLS), `ws://` and `wss://`
//! (websockets). TLS trusts the CA certificates given as PEM (a file or text), else the system's
//! roots. Certificate verification can be turned off for test brokers; that accepts any
//! certificate and is logged as a warning every time a source starts with it.

use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use fleetflow_protocol::broker_url::{parse as parse_url, BrokerUrl, Scheme};

impl From<fleetflow_protocol::broker_url::BadBrokerUrl> for TransportError {
    fn from(e: fleetflow_protocol::broker_url::BadBrokerUrl) -> Self {
        TransportError::BadUrl(e.0)
    }
}

/// Why a broker URL or TLS setting was refused.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Not a URL this engine can dial.
    #[error("broker URL {0:?} must look like mqtt://host:port, mqtts://host:port, ws://host:port/path or wss://host:port/path")]
    BadUrl(String),
    /// The CA file could not be read.
    #[error("mqtt.ca_file {0}: {1}")]
    CaFile(String, std::io::Error),
    /// The CA PEM held no usable certificate.
    #[error("the CA certificate PEM holds no usable certificate: {0}")]
    BadCa(String),
    /// TLS setup failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// The rumqttc transport for `url`, with TLS trusting `ca_pem` (else the system roots).
pub fn transport(
    url: &BrokerUrl,
    ca_pem: Option<&[u8]>,
    verify_cert: bool,
) -> Result<Transport, TransportError> {
    if !url.scheme.tls() {
        return Ok(match url.scheme {
            Scheme::Ws => Transport::Ws,
            _ => Transport::Tcp,
        });
    }
    let tls = TlsConfiguration::Rustls(tls_config(ca_pem, verify_cert)?);
    Ok(match url.scheme {
        Scheme::Wss => Transport::Wss(tls),
        _ => Transport::Tls(tls),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS client config trusting `ca_pem`, or the system roots when it is `None`.
pub fn tls_config(
    ca_pem: Option<&[u8]>,
    verify_cert: bool,
) -> Result<Arc<ClientConfig>, TransportError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    if !verify_cert {
        tracing::warn!(
            "TLS certificate verification is OFF for an MQTT source: any certificate is accepted \
             and the connection can be intercepted; use it only with test brokers"
        );
        return Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
                .with_no_client_auth(),
        ));
    }
    let mut roots = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TransportError::BadCa(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| TransportError::BadCa(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(TransportError::BadCa("no CERTIFICATE block".into()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TransportError::Tls(
                    "no system CA certificates found; set mqtt.ca_file".into(),
                ));
            }
        }
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

/// Reads a CA file.
pub fn read_ca_file(path: &str) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|e| TransportError::CaFile(path.into(), e))
}

/// Accepts any server certificate (`verify_cert = false`); signatures are still checked so
/// that the handshake is well-formed.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_every_scheme_parse_with_default_ports_and_paths() {
        let u = parse_url("mqtt://127.0.0.1:11883").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Mqtt, "127.0.0.1", 11883)
        );
        assert_eq!(u.dial_address(), "127.0.0.1");
        assert_eq!(parse_url("mqtt://broker").unwrap().port, 1883);
        assert_eq!(parse_url("tcp://broker").unwrap().scheme, Scheme::Mqtt);
        assert_eq!(parse_url("mqtts://broker").unwrap().port, 8883);
        let ws = parse_url("ws://127.0.0.1:9001").unwrap();
        assert_eq!(ws.dial_address(), "ws://127.0.0.1:9001/mqtt");
        let wss = parse_url("wss://hub.example:443/ws/mqtt").unwrap();
        assert_eq!(wss.dial_address(), "wss://hub.example:443/ws/mqtt");
        assert!(wss.scheme.tls());
        assert_eq!(parse_url("mqtt://[::1]:1883").unwrap().host, "::1");
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "http://x",
            "mqtt://:1",
            "mqtt://host:0",
            "mqtt://host:x",
            "mqtt://u:p@host",
            "mqtt://host/path",
            "broker:1883",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_pem_without_certificates_is_refused() {
        assert!(matches!(
            tls_config(Some(b"not a pem"), true),
            Err(TransportError::BadCa(_))
        ));
        assert!(tls_config(None, false).is_ok());
    }
}
