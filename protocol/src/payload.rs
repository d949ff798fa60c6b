//! What both device formats' decoders share (`message` for v1 and the dispatch, `gxp` for the
//! GXP firmware): the optional measurements and the decode error with its §7 code.

use serde::Deserialize;

use crate::errors::ErrorCode;

/// Optional measurements shared by readings and capture metadata.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Measurements {
    /// °C
    #[serde(default)]
    pub temperature_c: Option<f64>,
    /// %RH
    #[serde(default)]
    pub humidity_pct: Option<f64>,
    /// hPa
    #[serde(default)]
    pub pressure_hpa: Option<f64>,
    /// kΩ
    #[serde(default)]
    pub gas_kohm: Option<f64>,
}

/// Why a payload was refused, with its protocol error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// 2101 (malformed JSON), 2102 (chunk without payload), 2103 (bad base64) or 2105 (unknown
    /// type, field missing or out of range).
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
    /// The capture the payload was about, when known (for NACKs and error details).
    pub capture_id: Option<String>,
}

impl DecodeError {
    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Malformed,
            message: message.into(),
            capture_id: None,
        }
    }
    pub(crate) fn field(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::BadField,
            message: message.into(),
            capture_id: None,
        }
    }
    pub(crate) fn with_capture(mut self, id: &str) -> Self {
        self.capture_id = Some(id.to_owned());
        self
    }
}

/// Classifies a JSON error: bad syntax is 2101, a bad field 2105.
pub(crate) fn json_error(e: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => DecodeError::field(e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => DecodeError::malformed(e.to_string()),
    }
}
