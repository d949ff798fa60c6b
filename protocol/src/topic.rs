//! Topic parsing (§1): splits `{prefix}/{device_id}/{suffix}` into a device id and a [`TopicKind`]
//! without allocating for the common case, and builds the engine's outbound topics.

use crate::ids::{is_valid_capture_id, DeviceId, DeviceIdError};

/// What a device published, by topic suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicKind {
    /// `{prefix}/{id}/status`
    Status,
    /// `{prefix}/{id}/data`: readings, capture metadata and JSON chunks.
    Data,
    /// `{prefix}/{id}/chunk/{capture_id}/{index}`: a raw binary chunk.
    Chunk {
        /// The capture this chunk belongs to (validated).
        capture_id: String,
        /// The chunk index (decimal in the topic).
        index: u32,
    },
    /// `{prefix}/{id}/cmd/result`
    CmdResult,
}

impl TopicKind {
    /// A short fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TopicKind::Status => "status",
            TopicKind::Data => "data",
            TopicKind::Chunk { .. } => "chunk",
            TopicKind::CmdResult => "cmd_result",
        }
    }
}

/// Why a topic could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic does not start with the configured prefix.
    #[error("topic is outside the prefix")]
    OutsidePrefix,
    /// The device id level is invalid (error 2101).
    #[error("invalid device id: {0}")]
    BadDeviceId(#[from] DeviceIdError),
    /// The suffix after the device id is not one the protocol defines (error 2102).
    #[error("unknown topic suffix {0:?}")]
    UnknownSuffix(String),
    /// A binary chunk topic with a bad capture id or index (error 2103).
    #[error("bad chunk topic: {0}")]
    BadChunkTopic(&'static str),
    /// The device id is in use by another source (product) (error 2101).
    #[error("the device id is in use by the source {0:?}")]
    Claimed(String),
}

/// A routed topic: the device and what kind of message it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTopic {
    /// The device, normalised.
    pub device_id: DeviceId,
    /// The message kind.
    pub kind: TopicKind,
}

/// Parses topics under one prefix.
#[derive(Debug, Clone)]
pub struct TopicParser {
    prefix: String,
}

impl TopicParser {
    /// A parser for `{prefix}/...` topics. The prefix has no trailing slash.
    pub fn new(prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        while prefix.ends_with('/') {
            prefix.pop();
        }
        Self { prefix }
    }

    /// The configured prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic filters to subscribe to for the camera profile.
    pub fn subscriptions(&self) -> [String; 4] {
        let p = &self.prefix;
        [
            format!("{p}/+/status"),
            format!("{p}/+/data"),
            format!("{p}/+/chunk/+/+"),
            format!("{p}/+/cmd/result"),
        ]
    }

    /// Splits a topic into its device id and kind.
    pub fn parse(&self, topic: &[u8]) -> Result<ParsedTopic, TopicError> {
        let p = self.prefix.as_bytes();
        if topic.len() <= p.len() + 1 || &topic[..p.len()] != p || topic[p.len()] != b'/' {
            return Err(TopicError::OutsidePrefix);
        }
        let rest = &topic[p.len() + 1..];
        let (id_raw, suffix) = match rest.iter().position(|&b| b == b'/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b""[..]),
        };
        // Known suffixes decide where the id ends; an id with a '/' in it is caught here because
        // what follows its first level is not a known suffix, and by DeviceId::parse otherwise.
        let kind = match suffix {
            b"status" => TopicKind::Status,
            b"data" => TopicKind::Data,
            b"cmd/result" => TopicKind::CmdResult,
            s if s.starts_with(b"chunk/") => parse_chunk_suffix(&s[6..])?,
            other => {
                // Validate the id first so that injection attempts are reported as 2101.
                DeviceId::parse_bytes(id_raw)?;
                return Err(TopicError::UnknownSuffix(
                    String::from_utf8_lossy(other).into_owned(),
                ));
            }
        };
        let device_id = DeviceId::parse_bytes(id_raw)?;
        Ok(ParsedTopic { device_id, kind })
    }

    /// Whether `topic` is one the engine publishes itself, `{prefix}/{device_id}/ack` or
    /// `{prefix}/{device_id}/cmd`: a broad filter such as `{prefix}/#` receives those too, and
    /// they are neither device messages nor errors.
    pub fn is_outbound(&self, topic: &[u8]) -> bool {
        let p = self.prefix.as_bytes();
        let Some(rest) = topic.strip_prefix(p).and_then(|r| r.strip_prefix(b"/")) else {
            return false;
        };
        match rest.iter().position(|&b| b == b'/') {
            Some(i) => i > 0 && matches!(&rest[i + 1..], b"ack" | b"cmd"),
            None => false,
        }
    }

    /// `{prefix}/{device_id}/ack`
    pub fn ack_topic(&self, device: &DeviceId) -> String {
        format!("{}/{}/ack", self.prefix, device)
    }

    /// `{prefix}/{device_id}/cmd`
    pub fn cmd_topic(&self, device: &DeviceId) -> String {
        format!("{}/{}/cmd", self.prefix, device)
    }
}

/// A placeholder's delimiters (written as escapes, so that brace-counting tools stay aligned).
const OPEN: char = '\u{7b}';
const CLOSE: char = '\u{7d}';

/// The topic filter a configured `pattern` subscribes to. A pattern without placeholders is a
/// filter as written (`org_1/devices/+/#`). A pattern with `{name}` placeholders is the old
/// config API's form, relative to the prefix: each placeholder level becomes `+`, and the
/// prefix is put in front unless the pattern already starts with it, so
/// `{application_id}/business-events` under `/v3/applications` is
/// `/v3/applications/+/business-events`.
pub fn pattern_filter(prefix: &str, pattern: &str) -> String {
    if !pattern.contains(OPEN) {
        return pattern.to_string();
    }
    let levels: Vec<&str> = pattern
        .split('/')
        .map(|l| {
            if l.starts_with(OPEN) && l.ends_with(CLOSE) {
                "+"
            } else {
                l
            }
        })
        .collect();
    let filter = levels.join("/");
    if filter == prefix || filter.starts_with(&format!("{prefix}/")) {
        filter
    } else {
        format!("{prefix}/{}", filter.trim_start_matches('/'))
    }
}

fn parse_chunk_suffix(s: &[u8]) -> Result<TopicKind, TopicError> {
    let slash = s
        .iter()
        .position(|&b| b == b'/')
        .ok_or(TopicError::BadChunkTopic("missing chunk index"))?;
    let (cid, idx) = (&s[..slash], &s[slash + 1..]);
    let cid = std::str::from_utf8(cid).map_err(|_| TopicError::BadChunkTopic("capture id"))?;
    if !is_valid_capture_id(cid) {
        return Err(TopicError::BadChunkTopic("capture id"));
    }
    if idx.is_empty() || idx.len() > 9 || !idx.iter().all(u8::is_ascii_digit) {
        return Err(TopicError::BadChunkTopic("chunk index"));
    }
    let index = idx
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    Ok(TopicKind::Chunk {
        capture_id: cid.to_owned(),
        index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> TopicParser {
        TopicParser::new("ESP32CAM")
    }

    #[test]
    fn a_pattern_with_placeholders_becomes_plus_levels_under_the_prefix() {
        let f = |prefix, pattern| pattern_filter(prefix, pattern);
        assert_eq!(
            f("/v3/applications", "{application_id}/business-events"),
            "/v3/applications/+/business-events"
        );
        assert_eq!(
            f("/v3/applications", "/v3/applications/{app}/{device}/up"),
            "/v3/applications/+/+/up"
        );
        // Without placeholders, a pattern is a filter as written.
        assert_eq!(f("org_1/devices", "org_1/devices/+/#"), "org_1/devices/+/#");
        assert_eq!(f("ESP32CAM", "other/#"), "other/#");
        // A placeholder inside a level is not a whole level: left for the filter check to refuse.
        assert_eq!(f("p", "a{b}/c"), "p/a{b}/c");
    }

    #[test]
    fn a_prefix_with_a_leading_slash_routes_its_topics() {
        let p = TopicParser::new("/v3/applications");
        let t = p.parse(b"/v3/applications/AABBCCDDEEFF/data").unwrap();
        assert_eq!(t.device_id.as_str(), "AABBCCDDEEFF");
        assert_eq!(t.kind, TopicKind::Data);
        assert_eq!(p.subscriptions()[0], "/v3/applications/+/status");
    }

    #[test]
    fn status_data_and_result_topics_are_recognised() {
        let t = p().parse(b"ESP32CAM/aabbccddeeff/status").unwrap();
        assert_eq!(t.device_id.as_str(), "AABBCCDDEEFF");
        assert_eq!(t.kind, TopicKind::Status);
        assert_eq!(
            p().parse(b"ESP32CAM/AABBCCDDEEFF/data").unwrap().kind,
            TopicKind::Data
        );
        assert_eq!(
            p().parse(b"ESP32CAM/AABBCCDDEEFF/cmd/result").unwrap().kind,
            TopicKind::CmdResult
        );
    }

    #[test]
    fn binary_chunk_topics_carry_capture_id_and_index() {
        let t = p().parse(b"ESP32CAM/AABBCCDDEEFF/chunk/img_1/17").unwrap();
        assert_eq!(
            t.kind,
            TopicKind::Chunk {
                capture_id: "img_1".into(),
                index: 17
            }
        );
        assert!(p().parse(b"ESP32CAM/AABBCCDDEEFF/chunk/img_1/x").is_err());
        assert!(p().parse(b"ESP32CAM/AABBCCDDEEFF/chunk/img 1/1").is_err());
        assert!(p().parse(b"ESP32CAM/AABBCCDDEEFF/chunk/img_1/").is_err());
    }

    #[test]
    fn prefixes_with_slashes_work_for_hosted_organisations() {
        let parser = TopicParser::new("org_7/devices");
        let t = parser.parse(b"org_7/devices/AABBCCDDEEFF/status").unwrap();
        assert_eq!(t.device_id.as_str(), "AABBCCDDEEFF");
        assert_eq!(
            parser.ack_topic(&t.device_id),
            "org_7/devices/AABBCCDDEEFF/ack"
        );
    }

    #[test]
    fn injected_device_ids_are_rejected_as_bad_device_ids() {
        for topic in [
            &b"ESP32CAM/AA+BB/status"[..],
            b"ESP32CAM/AA#/data",
            b"ESP32CAM/AA:BB/status",
        ] {
            assert!(
                matches!(p().parse(topic), Err(TopicError::BadDeviceId(_))),
                "{topic:?}"
            );
        }
        let long = format!("ESP32CAM/{}/status", "A".repeat(65));
        assert!(matches!(
            p().parse(long.as_bytes()),
            Err(TopicError::BadDeviceId(_))
        ));
    }

    #[test]
    fn other_prefixes_and_unknown_suffixes_are_refused() {
        assert_eq!(
            p().parse(b"OTHER/AABBCCDDEEFF/status"),
            Err(TopicError::OutsidePrefix)
        );
        assert_eq!(
            p().parse(b"ESP32CAMX/AABBCCDDEEFF/status"),
            Err(TopicError::OutsidePrefix)
        );
        assert!(matches!(
            p().parse(b"ESP32CAM/AABBCCDDEEFF/bogus"),
            Err(TopicError::UnknownSuffix(_))
        ));
    }

    #[test]
    fn the_engines_own_ack_and_command_topics_are_recognised() {
        let p = TopicParser::new("ESP32CAM");
        assert!(p.is_outbound(b"ESP32CAM/cam-1/ack"));
        assert!(p.is_outbound(b"ESP32CAM/cam-1/cmd"));
        assert!(TopicParser::new("org_1/devices").is_outbound(b"org_1/devices/cam-1/cmd"));
        assert!(!p.is_outbound(b"ESP32CAM/cam-1/cmd/result"));
        assert!(!p.is_outbound(b"ESP32CAM/cam-1/data"));
        assert!(!p.is_outbound(b"ESP32CAM//ack"));
        assert!(!p.is_outbound(b"OTHER/cam-1/ack"));
    }
}
