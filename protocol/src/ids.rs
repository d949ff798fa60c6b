//! Validated identifiers from topics and payloads: device ids (§1) and capture ids (§4.1).

use std::fmt;
use std::sync::Arc;

/// Longest device id the protocol accepts, in bytes (§1).
pub const MAX_DEVICE_ID_BYTES: usize = 64;
/// Longest capture id the protocol accepts, in bytes (§4.1).
pub const MAX_CAPTURE_ID_BYTES: usize = 64;

/// A device id: 1 to 64 characters of `A-Z a-z 0-9 _ -`, with MAC addresses (12 hex digits)
/// normalised to uppercase; other ids keep their case. Cheap to clone: the text is shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(Arc<str>);

/// Why a device id from a topic was refused (error 2104).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// The topic level is empty.
    #[error("device id is empty")]
    Empty,
    /// Longer than [`MAX_DEVICE_ID_BYTES`].
    #[error("device id is {0} bytes, over the 64-byte limit")]
    TooLong(usize),
    /// Contains a character outside `A-Z a-z 0-9 _ -` (such as `:`, `/`, `+`, `#` or NUL).
    #[error("device id contains a forbidden character {0:?}")]
    ForbiddenChar(char),
    /// Not valid UTF-8.
    #[error("device id is not valid UTF-8")]
    NotUtf8,
}

impl DeviceId {
    /// Validates and normalises a device id taken from a topic level.
    pub fn parse(raw: &str) -> Result<Self, DeviceIdError> {
        if raw.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if raw.len() > MAX_DEVICE_ID_BYTES {
            return Err(DeviceIdError::TooLong(raw.len()));
        }
        if let Some(c) = raw
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err(DeviceIdError::ForbiddenChar(c));
        }
        let is_mac = raw.len() == 12 && raw.bytes().all(|b| b.is_ascii_hexdigit());
        if is_mac && raw.bytes().any(|b| b.is_ascii_lowercase()) {
            Ok(Self(Arc::from(raw.to_ascii_uppercase())))
        } else {
            Ok(Self(Arc::from(raw)))
        }
    }

    /// Validates raw topic bytes.
    pub fn parse_bytes(raw: &[u8]) -> Result<Self, DeviceIdError> {
        let s = std::str::from_utf8(raw).map_err(|_| DeviceIdError::NotUtf8)?;
        Self::parse(s)
    }

    /// The normalised id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", &self.0)
    }
}

/// Whether `id` is a valid capture id: `[A-Za-z0-9._-]{1,64}` (§4.1).
pub fn is_valid_capture_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CAPTURE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercase_device_ids_are_normalised_to_uppercase() {
        assert_eq!(
            DeviceId::parse("aabbccddeeff").unwrap().as_str(),
            "AABBCCDDEEFF"
        );
        assert_eq!(
            DeviceId::parse("AABBCCDDEEFF").unwrap().as_str(),
            "AABBCCDDEEFF"
        );
    }

    #[test]
    fn test_rig_names_are_accepted_and_keep_their_case() {
        for ok in ["CMDTEST01", "ERROR101", "cam-1", "rig_07", "a"] {
            assert_eq!(DeviceId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn device_ids_with_forbidden_characters_or_too_long_are_rejected() {
        for bad in ["AA:BB", "AA/BB", "AA+", "#", "A\0B", "AA.BB", "AA BB", "é"] {
            assert!(
                matches!(DeviceId::parse(bad), Err(DeviceIdError::ForbiddenChar(_))),
                "{bad}"
            );
        }
        assert_eq!(DeviceId::parse(""), Err(DeviceIdError::Empty));
        assert_eq!(
            DeviceId::parse(&"A".repeat(65)),
            Err(DeviceIdError::TooLong(65))
        );
        assert!(DeviceId::parse(&"A".repeat(64)).is_ok());
    }

    #[test]
    fn capture_ids_follow_the_protocol_pattern() {
        assert!(is_valid_capture_id("img_000183"));
        assert!(is_valid_capture_id("a.b-c_D9"));
        assert!(!is_valid_capture_id(""));
        assert!(!is_valid_capture_id("img/1"));
        assert!(!is_valid_capture_id("img 1"));
        assert!(!is_valid_capture_id(&"a".repeat(65)));
    }
}
