//! Sensor trends and fleet analytics on the real engine and PostgreSQL: a day of readings and
//! status rows seeded in SQL with known values, read back in 1 h buckets and compared with
//! aggregates computed here; another device's rows stay out; bad parameters are 400s naming the
//! field; captures per day and per week; the vendored uPlot files are served.

use crate::common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::{random_device, Options, TestEnv};
use serde_json::Value;

const TOKEN: &str = "trends-test-token-0123456789abcdef";

async fn env() -> TestEnv {
    TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        ..Options::default()
    })
    .await
}

async fn get(env: &TestEnv, path_and_query: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{path_and_query}", env.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// One seeded reading.
struct Reading {
    at: DateTime<Utc>,
    temperature_c: f64,
    humidity_pct: f64,
    pressure_hpa: f64,
    gas_kohm: Option<f64>,
}

async fn insert_readings(c: &tokio_postgres::Client, device: &str, rows: &[Reading]) {
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    let t: Vec<f64> = rows.iter().map(|r| r.temperature_c).collect();
    let h: Vec<f64> = rows.iter().map(|r| r.humidity_pct).collect();
    let p: Vec<f64> = rows.iter().map(|r| r.pressure_hpa).collect();
    let g: Vec<Option<f64>> = rows.iter().map(|r| r.gas_kohm).collect();
    c.execute(
        "INSERT INTO sensor_readings (device_id, seq, temperature_c, humidity_pct, pressure_hpa, gas_kohm, measured_at)
         SELECT $1, nextval('sensor_readings_id_seq'), * FROM UNNEST($2::float8[], $3::float8[], $4::float8[], $5::float8[], $6::timestamptz[])",
        &[&device, &t, &h, &p, &g, &at],
    )
    .await
    .unwrap();
}

async fn insert_status(
    c: &tokio_postgres::Client,
    device: &str,
    rows: &[(DateTime<Utc>, f64, i32)],
) {
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.0).collect();
    let b: Vec<f64> = rows.iter().map(|r| r.1).collect();
    let s: Vec<i32> = rows.iter().map(|r| r.2).collect();
    c.execute(
        "INSERT INTO device_status (device_id, status, battery_v, rssi, created_at)
         SELECT $1, 'online', * FROM UNNEST($2::float8[], $3::int4[], $4::timestamptz[])",
        &[&device, &b, &s, &at],
    )
    .await
    .unwrap();
}

fn close(a: &Value, b: f64, what: &str) {
    let a = a
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {a}"));
    assert!(
        (a - b).abs() < 1e-9 * b.abs().max(1.0),
        "{what}: got {a}, expected {b}"
    );
}

/// avg, min, max of the present values.
fn agg(values: impl Iterator<Item = Option<f64>>) -> (f64, f64, f64, usize) {
    let v: Vec<f64> = values.flatten().collect();
    let n = v.len();
    let sum: f64 = v.iter().sum();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (sum / n as f64, min, max, n)
}

#[tokio::test]
async fn readings_come_back_in_hourly_buckets_with_exact_aggregates_and_only_the_devices_own() {
    let env = env().await;
    let db = env.db().await;
    let (device, other) = (random_device(), random_device());
    let day = Utc.with_ymd_and_hms(2025, 1, 10, 0, 0, 0).unwrap();

    // One reading a minute for the day: temperature climbs within each hour and with the hour,
    // humidity follows minute % 7, pressure the hour, gas is missing every 10th minute.
    let readings: Vec<Reading> = (0..1440i64)
        .map(|i| Reading {
            at: day + Duration::minutes(i),
            temperature_c: (i / 60) as f64 + (i % 60) as f64 * 0.1,
            humidity_pct: 50.0 + (i % 7) as f64,
            pressure_hpa: 1000.0 + (i / 60) as f64 * 0.5,
            gas_kohm: (i % 10 != 0).then_some(100.0 + (i % 13) as f64),
        })
        .collect();
    insert_readings(&db, &device, &readings).await;
    // Just outside the range on both sides: not counted.
    let outside = |at| Reading {
        at,
        temperature_c: -50.0,
        humidity_pct: 0.0,
        pressure_hpa: 0.0,
        gas_kohm: None,
    };
    insert_readings(
        &db,
        &device,
        &[
            outside(day - Duration::seconds(1)),
            outside(day + Duration::days(1)),
        ],
    )
    .await;
    // Status every 5 minutes.
    let status: Vec<(DateTime<Utc>, f64, i32)> = (0..288i64)
        .map(|i| {
            (
                day + Duration::minutes(5 * i),
                3.0 + (i % 12) as f64 * 0.05,
                -60 - (i % 9) as i32,
            )
        })
        .collect();
    insert_status(&db, &device, &status).await;
    // The control: another device, same times, values far off.
    let control: Vec<Reading> = (0..1440i64)
        .map(|i| Reading {
            at: day + Duration::minutes(i),
            temperature_c: 1000.0,
            humidity_pct: 1000.0,
            pressure_hpa: 1000.0,
            gas_kohm: Some(1000.0),
        })
        .collect();
    insert_readings(&db, &other, &control).await;
    insert_status(&db, &other, &[(day + Duration::hours(3), 9.9, 10)]).await;

    let (code, body) = get(
        &env,
        &format!(
            "/api/v1/devices/{device}/readings?from=2025-01-10T00:00:00Z&to=2025-01-11T00:00:00Z&bucket=1h"
        ),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["bucket"], "1h");
    assert_eq!(body["bucket_secs"], 3600);
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24, "{body}");
    for h in [0i64, 3, 17, 23] {
        let b = &buckets[h as usize];
        let start = day + Duration::hours(h);
        assert_eq!(
            b["t"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(),
            start
        );
        let rows: Vec<&Reading> = readings
            .iter()
            .filter(|r| r.at >= start && r.at < start + Duration::hours(1))
            .collect();
        assert_eq!(b["count"], rows.len() as i64, "hour {h}");
        assert_eq!(b["count"], 60);
        for (key, col) in [
            (
                "temperature_c",
                rows.iter()
                    .map(|r| Some(r.temperature_c))
                    .collect::<Vec<_>>(),
            ),
            (
                "humidity_pct",
                rows.iter().map(|r| Some(r.humidity_pct)).collect(),
            ),
            (
                "pressure_hpa",
                rows.iter().map(|r| Some(r.pressure_hpa)).collect(),
            ),
            ("gas_kohm", rows.iter().map(|r| r.gas_kohm).collect()),
        ] {
            let (avg, min, max, _) = agg(col.into_iter());
            close(&b[key]["avg"], avg, &format!("hour {h} {key} avg"));
            close(&b[key]["min"], min, &format!("hour {h} {key} min"));
            close(&b[key]["max"], max, &format!("hour {h} {key} max"));
        }
        let st: Vec<_> = status
            .iter()
            .filter(|s| s.0 >= start && s.0 < start + Duration::hours(1))
            .collect();
        assert_eq!(b["status_count"], st.len() as i64);
        let (bat, ..) = agg(st.iter().map(|s| Some(s.1)));
        let (rssi, ..) = agg(st.iter().map(|s| Some(f64::from(s.2))));
        close(&b["battery_v"]["avg"], bat, &format!("hour {h} battery"));
        close(&b["rssi"]["avg"], rssi, &format!("hour {h} rssi"));
    }
    // Spot values written out, so that a shared mistake in `agg` would not hide: hour 17 has
    // temperatures 17.0..22.9 and gas missing at 6 of its 60 minutes.
    close(&buckets[17]["temperature_c"]["min"], 17.0, "t min");
    close(&buckets[17]["temperature_c"]["max"], 17.0 + 5.9, "t max");
    close(&buckets[17]["pressure_hpa"]["avg"], 1008.5, "p avg");
    // No value of the control device (1000, battery 9.9) and none outside the range (-50).
    let total: i64 = buckets.iter().map(|b| b["count"].as_i64().unwrap()).sum();
    assert_eq!(total, 1440);
    for b in buckets {
        assert!(b["temperature_c"]["max"].as_f64().unwrap() < 100.0, "{b}");
        assert!(b["temperature_c"]["min"].as_f64().unwrap() >= 0.0, "{b}");
        assert!(b["battery_v"]["avg"].as_f64().unwrap() < 4.0, "{b}");
    }
    // Positive control: the other device's readings are there under its own id.
    let (code, ob) = get(
        &env,
        &format!(
            "/api/v1/devices/{other}/readings?from=2025-01-10T00:00:00Z&to=2025-01-11T00:00:00Z&bucket=1h"
        ),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(ob["buckets"].as_array().unwrap().len(), 24);
    close(&ob["buckets"][3]["temperature_c"]["avg"], 1000.0, "control");
    close(
        &ob["buckets"][3]["battery_v"]["avg"],
        9.9,
        "control battery",
    );

    // Without a bucket: the narrowest giving at most 500 points (1 m over 2 hours, 5 m over a
    // day). An offset time with its `+` left unencoded in the URL is read as `+01:00`.
    let (code, d) = get(
        &env,
        &format!("/api/v1/devices/{device}/readings?from=2025-01-10T01:00:00+01:00&to=2025-01-10T02:00:00Z"),
    )
    .await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["bucket"], "1m");
    let n: i64 = d["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_i64().unwrap())
        .sum();
    assert_eq!(n, 120, "00:00..02:00 UTC");
    let (_, d) = get(
        &env,
        &format!(
            "/api/v1/devices/{device}/readings?from=2025-01-10T00:00:00Z&to=2025-01-11T00:00:00Z"
        ),
    )
    .await;
    assert_eq!(d["bucket"], "5m");
    assert_eq!(d["buckets"].as_array().unwrap().len(), 288);

    // The default range is the last 24 hours.
    let now = Utc::now();
    insert_readings(
        &db,
        &device,
        &[
            Reading {
                at: now - Duration::minutes(30),
                temperature_c: 21.0,
                humidity_pct: 40.0,
                pressure_hpa: 1010.0,
                gas_kohm: None,
            },
            Reading {
                at: now - Duration::hours(25),
                temperature_c: 99.0,
                humidity_pct: 40.0,
                pressure_hpa: 1010.0,
                gas_kohm: None,
            },
        ],
    )
    .await;
    let (code, d) = get(&env, &format!("/api/v1/devices/{device}/readings")).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["bucket"], "5m");
    let b = d["buckets"].as_array().unwrap();
    assert_eq!(b.len(), 1, "{d}");
    close(&b[0]["temperature_c"]["avg"], 21.0, "recent reading");
    assert!(b[0]["gas_kohm"]["avg"].is_null());
}

#[tokio::test]
async fn bad_parameters_are_400s_naming_the_field_and_a_token_is_needed() {
    let env = env().await;
    let dev = random_device();
    let r = format!("/api/v1/devices/{dev}/readings");
    for (query, field) in [
        (format!("{r}?bucket=2h"), "bucket"),
        (format!("{r}?from=yesterday"), "from"),
        (format!("{r}?to=2025-13-01T00:00:00Z"), "to"),
        (
            format!("{r}?from=2025-01-02T00:00:00Z&to=2025-01-01T00:00:00Z"),
            "from",
        ),
        (
            format!("{r}?from=2024-01-01T00:00:00Z&to=2025-03-01T00:00:00Z"),
            "from",
        ),
        (
            format!("{r}?from=2025-01-01T00:00:00Z&to=2025-01-31T00:00:00Z&bucket=1m"),
            "bucket",
        ),
        ("/api/v1/devices/bad!id/readings".to_string(), "device_id"),
        ("/api/v1/stats/captures?bucket=month".to_string(), "bucket"),
        ("/api/v1/stats/captures?from=soon".to_string(), "from"),
    ] {
        let (code, body) = get(&env, &query).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    // 400 days is allowed, and a device with no rows has no buckets.
    let (code, body) = get(
        &env,
        &format!("{r}?from=2024-01-01T00:00:00Z&to=2025-02-04T00:00:00Z"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["bucket"], "1d");
    assert_eq!(body["buckets"], serde_json::json!([]));

    let c = reqwest::Client::new();
    for path in [r.as_str(), "/api/v1/stats/captures"] {
        let r = c.get(format!("{}{path}", env.http)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
}

#[tokio::test]
async fn captures_are_counted_per_day_and_week_by_status() {
    let env = env().await;
    let db = env.db().await;
    let d = |day: u32, h: u32| Utc.with_ymd_and_hms(2025, 1, day, h, 0, 0).unwrap();
    // 2025-01-10 is a Friday.
    let seeded: Vec<(DateTime<Utc>, &str)> = vec![
        (d(10, 1), "stored"),
        (d(10, 8), "stored"),
        (d(10, 23), "stored"),
        (d(10, 12), "failed"),
        (d(11, 0), "stored"),
        (d(11, 6), "stored"),
        (d(13, 9), "failed"),
        (d(13, 10), "assembling"),
        (d(9, 23), "stored"),  // before `from`
        (d(14, 0), "stored"),  // at `to`: excluded
        (d(21, 12), "failed"), // another week
    ];
    for (i, (at, status)) in seeded.iter().enumerate() {
        db.execute(
            "INSERT INTO captures (device_id, device_capture_id, captured_at, image_bytes, total_chunks, chunk_size, ingest_status)
             VALUES ($1, $2, $3, 1000, 1, 1000, $4)",
            &[&random_device(), &format!("c{i}"), at, status],
        )
        .await
        .unwrap();
    }
    let (code, body) = get(
        &env,
        "/api/v1/stats/captures?bucket=day&from=2025-01-10T00:00:00Z&to=2025-01-14T00:00:00Z",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let got: Vec<(String, i64, i64, i64)> = body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["t"]
                    .as_str()
                    .unwrap()
                    .parse::<DateTime<Utc>>()
                    .unwrap()
                    .date_naive()
                    .to_string(),
                b["stored"].as_i64().unwrap(),
                b["failed"].as_i64().unwrap(),
                b["assembling"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, i64, i64, i64)> = vec![
        ("2025-01-10".into(), 3, 1, 0),
        ("2025-01-11".into(), 2, 0, 0),
        ("2025-01-12".into(), 0, 0, 0),
        ("2025-01-13".into(), 0, 1, 1),
    ];
    assert_eq!(got, want, "{body}");
    assert_eq!(body["totals"]["stored"], 5);
    assert_eq!(body["totals"]["failed"], 2);

    // Weeks start on Monday (UTC): 01-06..01-12 and 01-13..01-19.
    let (code, body) = get(
        &env,
        "/api/v1/stats/captures?bucket=week&from=2025-01-06T00:00:00Z&to=2025-01-20T00:00:00Z",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let b = body["buckets"].as_array().unwrap();
    assert_eq!(b.len(), 2, "{body}");
    assert_eq!(
        b[0]["t"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        d(6, 0)
    );
    assert_eq!(
        (b[0]["stored"].as_i64(), b[0]["failed"].as_i64()),
        (Some(6), Some(1))
    );
    assert_eq!(
        (
            b[1]["stored"].as_i64(),
            b[1]["failed"].as_i64(),
            b[1]["assembling"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );

    // The default: the last 14 days, one bucket a day (15 when the range starts mid-day).
    let (code, body) = get(&env, "/api/v1/stats/captures").await;
    assert_eq!(code, 200);
    assert_eq!(body["bucket"], "day");
    let n = body["buckets"].as_array().unwrap().len();
    assert!(n == 14 || n == 15, "{n}");
    assert_eq!(body["totals"]["stored"], 0, "nothing seeded lately");
}

#[tokio::test]
async fn the_vendored_uplot_is_served_with_its_type_and_a_long_cache() {
    let env = env().await;
    let c = reqwest::Client::new();
    for (path, ctype, start) in [
        (
            "/vendor/uPlot.iife.min.js",
            "text/javascript",
            "/*! https://github.com/leeoniya/uPlot",
        ),
        ("/vendor/uPlot.min.css", "text/css", ".uplot"),
        ("/vendor/uPlot.LICENSE", "text/plain", "The MIT License"),
    ] {
        let r = c.get(format!("{}{path}", env.http)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = |n: &str| r.headers()[n].to_str().unwrap().to_string();
        assert!(h("content-type").starts_with(ctype), "{path}");
        assert!(h("cache-control").contains("max-age=31536000"), "{path}");
        let body = r.text().await.unwrap();
        assert!(body.starts_with(start), "{path}: {}", &body[..60]);
    }
    // The console links the same version the vendor script pinned.
    let version = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/admin/vendor/VERSION"
    ))
    .unwrap();
    let page = c.get(&env.http).send().await.unwrap().text().await.unwrap();
    assert!(
        page.contains(&format!("/vendor/uPlot.iife.min.js?v={}\"", version.trim())),
        "the page links uPlot {version}"
    );
}
