//! What a restart acts on, as a type: the canonical text (`device:<id>`, `source:<product_id>`,
//! `sink:postgres`, `sink:objects`, `pipeline`) is parsed once, here, and written back by
//! `Display`. The same forms are checked again by the database's own guard, the regex in
//! `request_service_restart` (migrations V2, V7 and V9), for rows written by other tools. The old
//! systems' service names map to a target in [`RestartTarget::for_service`].

use std::fmt;
use std::str::FromStr;

use fleetflow_protocol::ids::{DeviceId, DeviceIdError};

/// Longest product id, in bytes (the `mqtt_configs.product_id` rule and the SQL guard's).
pub const MAX_PRODUCT_ID_BYTES: usize = 64;

/// The forms a restart target may take, for error messages and hints.
pub const EXPECTED_FORMS: &str =
    "device:<id>, source:<product_id>, sink:postgres, sink:objects or pipeline";

/// A restart target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RestartTarget {
    /// `device:<id>`: a fresh device actor, which must answer a snapshot.
    Device(DeviceId),
    /// `source:<product_id>` (`default` is the `[mqtt]` source): a reconnect, which must be
    /// connected within 5 s. The product id follows [`is_product_id`].
    Source(String),
    /// `sink:postgres`: a new connection pool for the Postgres sink, then a round trip.
    SinkPostgres,
    /// `sink:objects`: a new object-store client, then a probe object.
    SinkObjects,
    /// `pipeline`: everything, in graceful-shutdown order, then rebuilt and checked.
    Pipeline,
}

/// Why a text is not a restart target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Whitespace anywhere (targets are compared as written, so `" pipeline"` is refused
    /// rather than trimmed).
    #[error("restart target {0:?} contains whitespace")]
    Whitespace(String),
    /// `device:` followed by something that is not a device id.
    #[error("invalid device id: {source}")]
    Device {
        /// Why the id was refused.
        #[source]
        source: DeviceIdError,
    },
    /// `source:` followed by nothing, or by something that is not a product id.
    #[error("invalid product id {0:?} in source:<product_id>: it must be 1-64 characters of [A-Za-z0-9._-]")]
    Product(String),
    /// None of the known forms.
    #[error("unknown restart target {0:?}; expected {EXPECTED_FORMS}")]
    Unknown(String),
}

/// Whether `raw` is a product id: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn is_product_id(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_PRODUCT_ID_BYTES
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl FromStr for RestartTarget {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(char::is_whitespace) {
            return Err(TargetError::Whitespace(s.to_string()));
        }
        if let Some(raw) = s.strip_prefix("device:") {
            return DeviceId::parse(raw)
                .map(Self::Device)
                .map_err(|source| TargetError::Device { source });
        }
        if let Some(product) = s.strip_prefix("source:") {
            return if is_product_id(product) {
                Ok(Self::Source(product.to_string()))
            } else {
                Err(TargetError::Product(product.to_string()))
            };
        }
        match s {
            "sink:postgres" => Ok(Self::SinkPostgres),
            "sink:objects" => Ok(Self::SinkObjects),
            "pipeline" => Ok(Self::Pipeline),
            _ => Err(TargetError::Unknown(s.to_string())),
        }
    }
}

/// The old systems' service names, all of which meant "restart the subscriber", that is the whole
/// `pipeline` (the SQL twin is `restart_target_for_service`, migration V9).
pub const OLD_SERVICE_NAMES: [&str; 4] = ["mqtt-subscriber", "mqtt", "all", "fleetflow"];

impl RestartTarget {
    /// The target an old service name (`mqtt-subscriber`, `mqtt`, `all`, compared without case)
    /// stands for, or a target text itself; `None` when it names neither.
    pub fn for_service(name: &str) -> Option<Self> {
        if OLD_SERVICE_NAMES
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            return Some(Self::Pipeline);
        }
        name.parse().ok()
    }
}

impl fmt::Display for RestartTarget {
    /// The canonical text: what is recorded in `service_restart_requests.target` and what the
    /// cooldown is counted by (a MAC address id in upper case).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device(id) => write!(f, "device:{id}"),
            Self::Source(product) => write!(f, "source:{product}"),
            Self::SinkPostgres => f.write_str("sink:postgres"),
            Self::SinkObjects => f.write_str("sink:objects"),
            Self::Pipeline => f.write_str("pipeline"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<RestartTarget, TargetError> {
        s.parse()
    }

    #[test]
    fn the_old_service_names_mean_the_pipeline_and_target_texts_pass_through() {
        for name in ["mqtt-subscriber", "mqtt", "all", "MQTT", "fleetflow"] {
            assert_eq!(
                RestartTarget::for_service(name),
                Some(RestartTarget::Pipeline)
            );
        }
        assert_eq!(
            RestartTarget::for_service("source:p1"),
            Some(RestartTarget::Source("p1".into()))
        );
        assert_eq!(RestartTarget::for_service("database"), None);
        assert_eq!(RestartTarget::for_service(""), None);
    }

    #[test]
    fn every_form_round_trips_through_its_canonical_text() {
        for text in [
            "device:AABBCCDDEEFF",
            "device:cam_01-b",
            "source:default",
            "source:acme.cam-2_x",
            "sink:postgres",
            "sink:objects",
            "pipeline",
        ] {
            let t = parse(text).unwrap();
            assert_eq!(t.to_string(), text);
            assert_eq!(parse(&t.to_string()).unwrap(), t);
        }
        assert_eq!(parse("sink:objects").unwrap(), RestartTarget::SinkObjects);
        assert_eq!(
            parse("source:p1").unwrap(),
            RestartTarget::Source("p1".into())
        );
    }

    #[test]
    fn a_mac_address_device_id_is_written_back_in_upper_case() {
        let t = parse("device:aabbccddeeff").unwrap();
        assert_eq!(t.to_string(), "device:AABBCCDDEEFF");
        assert_eq!(parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn a_device_target_with_an_invalid_id_is_refused_with_the_id_error() {
        assert!(matches!(
            parse("device:"),
            Err(TargetError::Device {
                source: DeviceIdError::Empty
            })
        ));
        assert!(matches!(
            parse("device:AA/BB"),
            Err(TargetError::Device {
                source: DeviceIdError::ForbiddenChar('/')
            })
        ));
        assert!(matches!(
            parse(&format!("device:{}", "A".repeat(65))),
            Err(TargetError::Device {
                source: DeviceIdError::TooLong(65)
            })
        ));
        let e = parse("device:a:b").unwrap_err();
        assert!(e.to_string().starts_with("invalid device id: "), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn a_source_target_needs_a_product_id() {
        assert_eq!(parse("source:"), Err(TargetError::Product(String::new())));
        assert_eq!(parse("source:a/b"), Err(TargetError::Product("a/b".into())));
        assert_eq!(
            parse(&format!("source:{}", "p".repeat(65))),
            Err(TargetError::Product("p".repeat(65)))
        );
        assert!(parse(&format!("source:{}", "p".repeat(64))).is_ok());
    }

    #[test]
    fn unknown_prefixes_and_near_misses_are_refused() {
        for text in [
            "",
            "reboot the world",
            "sink:",
            "sink:s3",
            "Pipeline",
            "pipeline:all",
            "devices:AABBCCDDEEFF",
            "AABBCCDDEEFF",
        ] {
            assert!(
                matches!(
                    parse(text),
                    Err(TargetError::Unknown(_)) | Err(TargetError::Whitespace(_))
                ),
                "{text:?} was accepted"
            );
        }
        let e = parse("sink:s3").unwrap_err().to_string();
        assert!(e.contains(EXPECTED_FORMS), "{e}");
    }

    #[test]
    fn whitespace_anywhere_is_refused_rather_than_trimmed() {
        for text in [
            " pipeline",
            "pipeline ",
            "device: AABBCCDDEEFF",
            "source:p 1",
            "sink:postgres\n",
            "\tsink:objects",
        ] {
            assert_eq!(parse(text), Err(TargetError::Whitespace(text.into())));
        }
    }
}
