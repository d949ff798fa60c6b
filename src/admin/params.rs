//! Checks shared by several admin handlers: device and product ids from the URL, page sizes,
//! and MQTT topic filters.

use fleetflow_protocol::ids::DeviceId;

use super::ApiError;
use crate::restart::target::is_product_id;

/// Why a text is not an MQTT topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Empty, longer than 65535 bytes, or holding a NUL.
    #[error("a topic filter is 1..65535 bytes without NUL")]
    Size,
    /// `#` inside a level, or not in the last one.
    #[error("`#` must be a whole level and the last one")]
    MultiLevel,
    /// `+` inside a level.
    #[error("`+` must be a whole level")]
    SingleLevel,
}

/// Checks an MQTT topic filter: `+` and `#` only as whole levels, `#` only last.
pub fn validate_filter(f: &str) -> Result<(), FilterError> {
    if f.is_empty() || f.len() > 65_535 || f.contains('\0') {
        return Err(FilterError::Size);
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Err(FilterError::MultiLevel);
        }
        if l.contains('+') && *l != "+" {
            return Err(FilterError::SingleLevel);
        }
    }
    Ok(())
}

/// Checks a product id from the URL.
pub fn product(raw: &str) -> Result<String, ApiError> {
    if !is_product_id(raw) {
        return Err(ApiError::bad_field(
            "product_id",
            "product id must be 1-64 characters of [A-Za-z0-9._-]",
        ));
    }
    Ok(raw.to_string())
}

/// A device id from the URL (400 naming `device_id`).
pub fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(raw)
        .map_err(|e| ApiError::bad_field("device_id", format!("invalid device id: {e}")))
}

/// The rows of a listing page when none is asked for, and the most one may ask for.
pub const PAGE_DEFAULT: i64 = 50;
/// See [`PAGE_DEFAULT`].
pub const PAGE_MAX: i64 = 500;

/// A page size, 1 to [`PAGE_MAX`] (default [`PAGE_DEFAULT`]; 400 naming `limit`).
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_field(
            "limit",
            format!("limit must be 1-{PAGE_MAX}"),
        ));
    }
    Ok(limit)
}

/// The `before_id` of the next page: the last row's id when the page is full, else none.
pub fn next_before_id(
    rows: &[serde_json::Value],
    limit: i64,
    id_field: &str,
) -> Option<serde_json::Value> {
    (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r[id_field].clone()))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_allow_wildcards_only_as_whole_levels() {
        use super::validate_filter as v;
        assert!(v("ESP32CAM/+/data").is_ok());
        assert!(v("org_1/devices/#").is_ok());
        assert!(v("#").is_ok());
        assert_eq!(v("a/#/b"), Err(FilterError::MultiLevel));
        assert_eq!(v("a/b#"), Err(FilterError::MultiLevel));
        assert_eq!(v("a/x+/b"), Err(FilterError::SingleLevel));
        assert_eq!(v(""), Err(FilterError::Size));
        assert_eq!(v("a\0b"), Err(FilterError::Size));
    }
}
