//! Images out of the bucket (product issue 13, item 4): the full-size download endpoint, links
//! to it (presigned on S3), and retention of old images and rows, against the real PostgreSQL,
//! Mosquitto and S3 server.

use crate::common;

use std::time::Duration;

use common::{eventually, random_device, Options, Store, TestDevice, TestEnv};
use fleetflow_sim::image::jpeg;
use object_store::{path::Path, ObjectStoreExt, PutPayload};
use serde_json::Value;

const TOKEN: &str = "images-test-token-0123456789abcdef";
const T: Duration = Duration::from_secs(20);

async fn engine(store: Store, extra: &str) -> TestEnv {
    TestEnv::start(Options {
        store,
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n{extra}"),
        ..Options::default()
    })
    .await
}

/// Sends one capture in 1 KiB binary chunks and waits for its ACK_OK; returns the image.
async fn capture(dev: &mut TestDevice, capture_id: &str, seed: u64) -> Vec<u8> {
    let image = jpeg(6_000 + seed as usize * 100, seed);
    dev.meta(capture_id, &image, 1024, true).await;
    for i in 0..image.len().div_ceil(1024) {
        dev.chunk_bin(capture_id, &image, 1024, i).await;
    }
    let ack = dev.next_ack(T).await;
    assert_eq!(ack["type"], "ACK_OK", "{ack}");
    assert_eq!(ack["capture_id"], capture_id);
    image.to_vec()
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn json(url: &str) -> (u16, Value) {
    let r = get(url, Some(TOKEN)).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn capture_url(env: &TestEnv, id: &str, capture_id: &str, what: &str) -> String {
    format!(
        "{}/api/v1/devices/{id}/captures/{capture_id}/{what}",
        env.http
    )
}

/// A `captures` row that never got stored (what a timed-out assembly leaves).
async fn insert_failed_capture(env: &TestEnv, id: &str, capture_id: &str, age_days: i32) {
    env.db()
        .await
        .execute(
            "INSERT INTO captures (device_id, device_capture_id, captured_at, image_bytes, total_chunks, chunk_size, ingest_status, created_at)
             VALUES ($1, $2, now(), 10, 1, 1024, 'failed', now() - make_interval(days => $3))",
            &[&id, &capture_id, &age_days],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_image_endpoint_streams_the_exact_stored_jpeg_from_s3() {
    let env = engine(Store::S3, "").await;
    let id = random_device();
    let mut dev = env.device(&id).await;
    let image = capture(&mut dev, "img_full_1", 7).await;

    let r = get(&capture_url(&env, &id, "img_full_1", "image"), Some(TOKEN)).await;
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers().clone();
    assert_eq!(h[reqwest::header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(
        h[reqwest::header::CONTENT_LENGTH],
        image.len().to_string().as_str()
    );
    assert_eq!(
        h[reqwest::header::CONTENT_DISPOSITION],
        format!("inline; filename=\"{id}_img_full_1.jpg\"").as_str()
    );
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), image.len());
    assert!(
        body.as_ref() == image.as_slice(),
        "the downloaded bytes are the image the device sent"
    );

    // Same auth as the thumbnail route.
    let r = get(&capture_url(&env, &id, "img_full_1", "image"), None).await;
    assert_eq!(r.status().as_u16(), 401);

    // Unknown, not stored, invalid: JSON errors.
    let (status, body) = json(&capture_url(&env, &id, "img_nope", "image")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    insert_failed_capture(&env, &id, "img_failed", 0).await;
    let (status, body) = json(&capture_url(&env, &id, "img_failed", "image")).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failed, not stored"),
        "{body}"
    );
    let (status, body) = json(&capture_url(&env, &id, "img$1", "image")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "capture_id");
}

#[tokio::test]
async fn a_link_on_s3_is_presigned_and_fetches_the_same_bytes_with_a_plain_get() {
    let env = engine(Store::S3, "").await;
    let id = random_device();
    let mut dev = env.device(&id).await;
    let image = capture(&mut dev, "img_link_1", 3).await;

    let before = chrono::Utc::now();
    let (status, body) = json(&format!(
        "{}?expires_in_s=120",
        capture_url(&env, &id, "img_link_1", "link")
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["signed"], true);
    let url = body["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(url.contains("X-Amz-Expires=120"), "{url}");
    assert!(
        url.contains(&format!("/{}/captures/{id}/", env.services.s3_bucket)),
        "{url}"
    );
    let expires_at: chrono::DateTime<chrono::Utc> =
        body["expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = (expires_at - before).num_seconds();
    assert!((115..=125).contains(&lifetime), "expires in {lifetime} s");

    // A plain GET, no credentials, no token: the signature is the authorisation.
    let r = get(url, None).await;
    assert_eq!(r.status().as_u16(), 200, "{url}");
    assert!(r.bytes().await.unwrap().as_ref() == image.as_slice());
    // Negative control: the same object without the signature is refused by the server.
    let bare = url.split('?').next().unwrap();
    assert_eq!(get(bare, None).await.status().as_u16(), 403, "{bare}");

    // 15 minutes by default.
    let (status, body) = json(&capture_url(&env, &id, "img_link_1", "link")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["url"].as_str().unwrap().contains("X-Amz-Expires=900"));

    for bad in ["0", "604801", "-1", "soon"] {
        let (status, body) = json(&format!(
            "{}?expires_in_s={bad}",
            capture_url(&env, &id, "img_link_1", "link")
        ))
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["field"], "expires_in_s", "{bad}");
    }
    let (status, _) = json(&capture_url(&env, &id, "img_nope", "link")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_link_on_the_local_store_is_the_download_url_and_needs_the_token() {
    let env = engine(Store::Local, "").await;
    let id = random_device();
    let mut dev = env.device(&id).await;
    let image = capture(&mut dev, "img_local_1", 5).await;

    let (status, body) = json(&capture_url(&env, &id, "img_local_1", "link")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["signed"], false, "{body}");
    assert!(body["expires_at"].is_null(), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("cannot sign"),
        "{body}"
    );
    let url = body["url"].as_str().unwrap();
    assert_eq!(url, capture_url(&env, &id, "img_local_1", "image"));
    let r = get(url, Some(TOKEN)).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.bytes().await.unwrap().as_ref() == image.as_slice());
    assert_eq!(get(url, None).await.status().as_u16(), 401);

    let (status, body) = json(&format!(
        "{}?expires_in_s=604801",
        capture_url(&env, &id, "img_local_1", "link")
    ))
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "expires_in_s");
}

#[tokio::test]
async fn retention_deletes_old_images_and_readings_marks_their_rows_and_keeps_newer_ones() {
    let env = engine(
        Store::Local,
        "[retention]\ncaptures_days = 1\nreadings_days = 1\nbatch_rows = 2\ninterval_secs = 1\n",
    )
    .await;
    let id = random_device();
    let mut dev = env.device(&id).await;
    capture(&mut dev, "img_old", 1).await;
    capture(&mut dev, "img_gone", 2).await;
    let newer = capture(&mut dev, "img_new", 4).await;
    for seq in 1..=5 {
        dev.publish(
            "data",
            format!(r#"{{"type":"reading","seq":{seq},"temperature_c":20.5}}"#),
        )
        .await;
    }
    dev.settle().await;
    let db = env.db().await;
    let count = format!("SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'");
    eventually(T, "5 readings stored", || async {
        (env.scalar_i64(&count).await == 5).then_some(())
    })
    .await;
    let file = |capture: &str| -> std::path::PathBuf {
        env.objects_dir
            .join(format!("captures/{id}/2026/10/04/{capture}.jpg"))
    };
    let thumb = |capture: &str| {
        env.objects_dir
            .join(format!("thumbnails/{id}/{capture}.jpg"))
    };
    // Cached thumbnails of the old capture and the new one.
    for c in ["img_old", "img_new"] {
        let r = get(&capture_url(&env, &id, c, "thumbnail"), Some(TOKEN)).await;
        assert_eq!(r.status().as_u16(), 200);
        assert!(thumb(c).exists(), "{c}'s thumbnail is cached");
    }
    // img_gone's object is already missing: it still counts as deleted.
    std::fs::remove_file(file("img_gone")).unwrap();
    // Never touched: a capture that was not stored, however old.
    insert_failed_capture(&env, &id, "img_failed_old", 3).await;

    // Two days old by the engine's clock; the newer capture and readings 4, 5 stay recent.
    db.execute(
        "UPDATE captures SET created_at = created_at - interval '2 days', captured_at = captured_at - interval '2 days'
         WHERE device_id = $1 AND device_capture_id IN ('img_old', 'img_gone')",
        &[&id],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE sensor_readings SET created_at = now() - interval '2 days' WHERE device_id = $1 AND seq <= 3",
        &[&id],
    )
    .await
    .unwrap();

    let marked = format!(
        "SELECT count(*) FROM captures WHERE device_id = '{id}' AND deleted_at IS NOT NULL"
    );
    eventually(T, "the two old captures to be marked", || async {
        (env.scalar_i64(&marked).await == 2).then_some(())
    })
    .await;
    eventually(T, "the old readings to be deleted", || async {
        (env.scalar_i64(&count).await == 2).then_some(())
    })
    .await;

    assert!(!file("img_old").exists(), "the old image is deleted");
    assert!(!thumb("img_old").exists(), "its cached thumbnail too");
    assert!(file("img_new").exists(), "the newer image is kept");
    assert!(thumb("img_new").exists(), "and its thumbnail");
    assert_eq!(std::fs::read(file("img_new")).unwrap(), newer);
    let rows = db
        .query(
            "SELECT device_capture_id, ingest_status, storage_path IS NOT NULL, deleted_at IS NOT NULL
             FROM captures WHERE device_id = $1 ORDER BY device_capture_id",
            &[&id],
        )
        .await
        .unwrap();
    let rows: Vec<(String, String, bool, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let row = |c: &str, status: &str, path: bool, deleted: bool| {
        (c.to_string(), status.to_string(), path, deleted)
    };
    assert_eq!(
        rows,
        vec![
            row("img_failed_old", "failed", false, false),
            row("img_gone", "stored", true, true),
            row("img_new", "stored", true, false),
            row("img_old", "stored", true, true),
        ],
        "rows are kept and only marked; nothing else changes"
    );
    let seqs: Vec<i64> = db
        .query(
            "SELECT seq FROM sensor_readings WHERE device_id = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seqs,
        vec![4, 5],
        "only the readings past the cutoff are gone"
    );

    let m = env.metrics().await;
    assert_eq!(
        common::metric_value(
            &m,
            "fleetflow_retention_deleted_total{kind=\"capture_objects\"}"
        ),
        2.0
    );
    assert_eq!(
        common::metric_value(&m, "fleetflow_retention_deleted_total{kind=\"readings\"}"),
        3.0
    );
    assert_eq!(
        common::metric_value(
            &m,
            "fleetflow_retention_failures_total{kind=\"capture_objects\"}"
        ),
        0.0
    );

    // The API follows: 404 for the deleted image and its link, the newer one still served.
    let (status, body) = json(&capture_url(&env, &id, "img_old", "image")).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deleted by retention"),
        "{body}"
    );
    let (status, _) = json(&capture_url(&env, &id, "img_old", "link")).await;
    assert_eq!(status, 404);
    let r = get(&capture_url(&env, &id, "img_new", "image"), Some(TOKEN)).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.bytes().await.unwrap().as_ref() == newer.as_slice());
}

#[tokio::test]
async fn two_engines_on_one_database_share_retention_and_delete_each_image_once() {
    const N: usize = 30;
    let services = common::Services::from_env();
    let db_url = common::create_database(&services.pg_url).await;
    let opts = Options {
        store: Store::S3,
        pg_url: Some(db_url.clone()),
        extra: "[retention]\ncaptures_days = 1\nbatch_rows = 4\ninterval_secs = 1\n".into(),
        ..Options::default()
    };
    let (one, two) = tokio::join!(TestEnv::start(opts.clone()), TestEnv::start(opts));
    let (s3, db) = (services.s3_store(), one.db().await);
    let id = random_device();
    let keys: Vec<String> = (0..N)
        .map(|i| format!("captures/{id}/2026/01/01/img_{i:03}.jpg"))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let image = jpeg(2_000, i as u64).to_vec();
        s3.put(&Path::from(key.as_str()), PutPayload::from(image))
            .await
            .unwrap();
        db.execute(
            "INSERT INTO captures (device_id, device_capture_id, captured_at, image_bytes, total_chunks, chunk_size, ingest_status, storage_path, stored_at, created_at)
             VALUES ($1, $2, now(), 2000, 2, 1024, 'stored', $3, now(), now() - interval '3 days')",
            &[&id, &format!("img_{i:03}"), key],
        )
        .await
        .unwrap();
    }
    let marked = format!(
        "SELECT count(*) FROM captures WHERE device_id = '{id}' AND deleted_at IS NOT NULL"
    );
    eventually(T, "every old capture to be marked", || async {
        (one.scalar_i64(&marked).await == N as i64).then_some(())
    })
    .await;
    for key in &keys {
        assert!(
            s3.head(&Path::from(key.as_str())).await.is_err(),
            "{key} is deleted"
        );
    }
    let series = "fleetflow_retention_deleted_total{kind=\"capture_objects\"}";
    let (m1, m2) = (one.metric(series).await, two.metric(series).await);
    assert_eq!(
        m1 + m2,
        N as f64,
        "each image is handled by one engine only (one: {m1}, two: {m2})"
    );
    drop((one, two));
    common::drop_database(&services.pg_url, &db_url);
}
