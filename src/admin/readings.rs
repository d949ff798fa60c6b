//! Sensor trends and fleet analytics, aggregated in SQL (docs/trends.md has the queries' plans
//! and the indexes of migration V12 that serve them):
//!
//! - `GET /api/v1/devices/{device_id}/readings?from=&to=&bucket=`: a device's readings
//!   (`sensor_readings`, by `measured_at`) and status history (`device_status`, by `created_at`)
//!   in time buckets, one query per table.
//! - `GET /api/v1/stats/captures?bucket=day|week&from=&to=`: captures per day or week over the
//!   whole fleet (`captures`, by `captured_at`), by `ingest_status`.

use std::collections::BTreeMap;

use axum::extract::{Path as UrlPath, Query, State};
use axum::Json;
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, ApiError};

/// Bucket widths a client may ask for, in seconds.
const BUCKETS: &[(&str, i64)] = &[
    ("1m", 60),
    ("5m", 300),
    ("15m", 900),
    ("30m", 1_800),
    ("1h", 3_600),
    ("3h", 10_800),
    ("6h", 21_600),
    ("12h", 43_200),
    ("1d", 86_400),
    ("7d", 604_800),
];
/// The default bucket is the narrowest giving at most this many points.
const TARGET_POINTS: i64 = 500;
/// A bucket asked for explicitly may give at most this many points.
const MAX_POINTS: i64 = 10_000;
/// The longest range, in days.
const MAX_RANGE_DAYS: i64 = 400;

/// Readings per bucket of one device. Buckets are aligned on the Unix epoch (a `1h` bucket
/// starts on the hour, UTC), so the first one may start before `from`; it holds only rows from
/// `from` on.
const READINGS_SQL: &str = "SELECT date_bin($2::bigint::float8 * interval '1 second', measured_at, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS t,
        count(*) AS n,
        avg(temperature_c) AS t_avg, min(temperature_c) AS t_min, max(temperature_c) AS t_max,
        avg(humidity_pct) AS h_avg, min(humidity_pct) AS h_min, max(humidity_pct) AS h_max,
        avg(pressure_hpa) AS p_avg, min(pressure_hpa) AS p_min, max(pressure_hpa) AS p_max,
        avg(gas_kohm) AS g_avg, min(gas_kohm) AS g_min, max(gas_kohm) AS g_max
   FROM sensor_readings
  WHERE device_id = $1 AND measured_at >= $3 AND measured_at < $4
  GROUP BY 1 ORDER BY 1";

/// Status history per bucket of one device (the same buckets).
const STATUS_SQL: &str = "SELECT date_bin($2::bigint::float8 * interval '1 second', created_at, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS t,
        count(*) AS n, avg(battery_v) AS battery_v, avg(rssi)::float8 AS rssi
   FROM device_status
  WHERE device_id = $1 AND created_at >= $3 AND created_at < $4
  GROUP BY 1 ORDER BY 1";

/// Captures per bucket by status. `$1` holds the buckets' starts (UTC days, or weeks from
/// Monday), `$4` their width in seconds; each bucket counts one range of the `captured_at`
/// index, clipped to `$2..$3`, so that no sort of the range's rows is needed.
const CAPTURES_SQL: &str = "SELECT b.t, c.stored, c.failed, c.assembling
   FROM unnest($1::timestamptz[]) AS b(t),
   LATERAL (SELECT count(*) FILTER (WHERE ingest_status = 'stored') AS stored,
                   count(*) FILTER (WHERE ingest_status = 'failed') AS failed,
                   count(*) FILTER (WHERE ingest_status = 'assembling') AS assembling
              FROM captures
             WHERE captured_at >= greatest(b.t, $2)
               AND captured_at < least(b.t + $4::bigint::float8 * interval '1 second', $3)) AS c
  ORDER BY b.t";

/// `?from=&to=&bucket=`
#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    bucket: Option<String>,
}

/// Parses an RFC 3339 time. A `+` of the offset left unencoded in the URL arrives as a space,
/// so that is read as `+`.
fn time(field: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    let parse = |s: &str| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc));
    parse(raw)
        .or_else(|e| match raw.rfind(' ') {
            Some(i) if i > 10 => parse(&format!("{}+{}", &raw[..i], &raw[i + 1..])),
            _ => Err(e),
        })
        .map_err(|e| {
            ApiError::bad_field(
                field,
                format!("{field} must be an RFC 3339 time such as 2025-01-31T12:00:00Z: {e}"),
            )
        })
}

/// `from` and `to` with their defaults (`to`: now; `from`: `to` minus `default_span`), checked:
/// `from` before `to`, at most [`MAX_RANGE_DAYS`] apart.
fn range(
    q: &RangeQuery,
    default_span: Duration,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let to = match q.to.as_deref() {
        Some(raw) => time("to", raw)?,
        None => Utc::now(),
    };
    let from = match q.from.as_deref() {
        Some(raw) => time("from", raw)?,
        None => to - default_span,
    };
    if from >= to {
        return Err(ApiError::bad_field("from", "from must be before to"));
    }
    if to - from > Duration::days(MAX_RANGE_DAYS) {
        return Err(ApiError::bad_field(
            "from",
            format!("the range from..to is at most {MAX_RANGE_DAYS} days"),
        ));
    }
    Ok((from, to))
}

/// The bucket asked for, or the narrowest giving at most [`TARGET_POINTS`] points.
fn bucket(raw: Option<&str>, span_secs: i64) -> Result<(&'static str, i64), ApiError> {
    let points = |secs: i64| (span_secs + secs - 1) / secs;
    match raw {
        None => Ok(BUCKETS
            .iter()
            .copied()
            .find(|&(_, secs)| points(secs) <= TARGET_POINTS)
            .unwrap_or(BUCKETS[BUCKETS.len() - 1])),
        Some(raw) => {
            let names: Vec<&str> = BUCKETS.iter().map(|b| b.0).collect();
            let (name, secs) = BUCKETS
                .iter()
                .copied()
                .find(|b| b.0 == raw)
                .ok_or_else(|| {
                    ApiError::bad_field(
                        "bucket",
                        format!("bucket must be one of {}", names.join(", ")),
                    )
                })?;
            if points(secs) > MAX_POINTS {
                return Err(ApiError::bad_field(
                    "bucket",
                    format!("bucket {name} gives more than {MAX_POINTS} points over this range; use a wider one"),
                ));
            }
            Ok((name, secs))
        }
    }
}

/// `{"avg", "min", "max"}` of one column, from the row's `{prefix}_avg`/`_min`/`_max`.
fn stat(r: &tokio_postgres::Row, prefix: &str) -> Value {
    let col = |s: &str| r.get::<_, Option<f64>>(format!("{prefix}_{s}").as_str());
    json!({"avg": col("avg"), "min": col("min"), "max": col("max")})
}

/// `GET /api/v1/devices/{device_id}/readings`: buckets in time order, each with the readings'
/// `count` and `{avg, min, max}` of each sensor column, and the status rows' `status_count` and
/// average `battery_v` and `rssi`. Only buckets holding a row are listed; a column the device
/// never sent is null.
pub async fn device_readings(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = super::params::device_id(&raw)?;
    let (from, to) = range(&q, Duration::hours(24))?;
    let (name, secs) = bucket(q.bucket.as_deref(), (to - from).num_seconds())?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    // Both on one connection, pipelined: one round trip each, in parallel.
    let device = id.as_str();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&device, &secs, &from, &to];
    let (readings, status) =
        tokio::try_join!(c.query(READINGS_SQL, &params), c.query(STATUS_SQL, &params),)
            .map_err(ApiError::internal)?;
    let empty = || {
        let none = json!({"avg": null, "min": null, "max": null});
        json!({"count": 0, "temperature_c": none, "humidity_pct": none, "pressure_hpa": none,
               "gas_kohm": none, "status_count": 0, "battery_v": {"avg": null}, "rssi": {"avg": null}})
    };
    let mut buckets: BTreeMap<DateTime<Utc>, Value> = BTreeMap::new();
    for r in &readings {
        let b = buckets.entry(r.get("t")).or_insert_with(empty);
        b["count"] = json!(r.get::<_, i64>("n"));
        b["temperature_c"] = stat(r, "t");
        b["humidity_pct"] = stat(r, "h");
        b["pressure_hpa"] = stat(r, "p");
        b["gas_kohm"] = stat(r, "g");
    }
    for r in &status {
        let b = buckets.entry(r.get("t")).or_insert_with(empty);
        b["status_count"] = json!(r.get::<_, i64>("n"));
        b["battery_v"] = json!({"avg": r.get::<_, Option<f64>>("battery_v")});
        b["rssi"] = json!({"avg": r.get::<_, Option<f64>>("rssi")});
    }
    let buckets: Vec<Value> = buckets
        .into_iter()
        .map(|(t, mut b)| {
            b["t"] = json!(t);
            b
        })
        .collect();
    Ok(Json(json!({
        "device_id": id.as_str(),
        "from": from,
        "to": to,
        "bucket": name,
        "bucket_secs": secs,
        "buckets": buckets,
    })))
}

/// The start of the UTC day or ISO week (Monday) holding `t`.
fn truncate(t: DateTime<Utc>, week: bool) -> DateTime<Utc> {
    let day = t.date_naive();
    let day = if week {
        day - Duration::days(i64::from(day.weekday().num_days_from_monday()))
    } else {
        day
    };
    Utc.from_utc_datetime(&day.and_time(chrono::NaiveTime::MIN))
}

/// `GET /api/v1/stats/captures`: `stored`, `failed` and `assembling` captures per day (default,
/// last 14 days) or week (last 12 weeks), every bucket from the one holding `from` to the one
/// holding `to` listed, zeros included, with `totals`.
pub async fn captures(
    State(s): State<AdminState>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<Value>, ApiError> {
    let week = match q.bucket.as_deref().unwrap_or("day") {
        "day" => false,
        "week" => true,
        _ => return Err(ApiError::bad_field("bucket", "bucket must be day or week")),
    };
    let (from, to) = range(
        &q,
        if week {
            Duration::weeks(12)
        } else {
            Duration::days(14)
        },
    )?;
    let unit = if week { "week" } else { "day" };
    let step = Duration::days(if week { 7 } else { 1 });
    let mut starts = Vec::new();
    let mut t = truncate(from, week);
    while t < to {
        starts.push(t);
        t += step;
    }
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let rows = c
        .query(CAPTURES_SQL, &[&starts, &from, &to, &step.num_seconds()])
        .await
        .map_err(ApiError::internal)?;
    let mut totals = [0i64; 3];
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            let n: [i64; 3] = [r.get("stored"), r.get("failed"), r.get("assembling")];
            for (t, n) in totals.iter_mut().zip(n) {
                *t += n;
            }
            json!({"t": r.get::<_, DateTime<Utc>>("t"), "stored": n[0], "failed": n[1], "assembling": n[2]})
        })
        .collect();
    Ok(Json(json!({
        "bucket": unit,
        "from": from,
        "to": to,
        "buckets": list,
        "totals": {"stored": totals[0], "failed": totals[1], "assembling": totals[2]},
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bucket_gives_at_most_500_points() {
        let day = 86_400;
        assert_eq!(bucket(None, day).unwrap(), ("5m", 300));
        assert_eq!(bucket(None, 3_600).unwrap(), ("1m", 60));
        assert_eq!(bucket(None, 30 * day).unwrap(), ("3h", 10_800));
        assert_eq!(bucket(None, 400 * day).unwrap(), ("1d", 86_400));
        assert_eq!(bucket(Some("1h"), day).unwrap(), ("1h", 3_600));
        assert_eq!(
            bucket(Some("2h"), day).unwrap_err().field.unwrap(),
            "bucket"
        );
        // 1 m over 8 days is 11520 points: refused.
        assert!(bucket(Some("1m"), 8 * day).is_err());
    }

    #[test]
    fn times_are_rfc3339_and_an_unencoded_plus_is_read_as_one() {
        let t = time("from", "2025-03-01T10:00:00+01:00").unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2025, 3, 1, 9, 0, 0).unwrap());
        assert_eq!(time("from", "2025-03-01T10:00:00 01:00").unwrap(), t);
        assert_eq!(time("to", "yesterday").unwrap_err().field.unwrap(), "to");
    }

    #[test]
    fn weeks_start_on_monday_utc() {
        // 2025-03-06 is a Thursday.
        let t = Utc.with_ymd_and_hms(2025, 3, 6, 15, 30, 0).unwrap();
        assert_eq!(
            truncate(t, true),
            Utc.with_ymd_and_hms(2025, 3, 3, 0, 0, 0).unwrap()
        );
        assert_eq!(
            truncate(t, false),
            Utc.with_ymd_and_hms(2025, 3, 6, 0, 0, 0).unwrap()
        );
    }
}
