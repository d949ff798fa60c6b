//! Tenants isolated by the database, not only by each query: an organisation token's requests
//! run under the `fleetflow_tenant` role (no BYPASSRLS) with `app.organization_id` set, so
//! row-level security hides every other organisation's rows even from a query that asks for
//! them. The engine's role owns the tables and sees everything (the positive control).

use crate::common;

use common::{Options, TestEnv};
use serde_json::{json, Value};

const TOKEN: &str = "tenancy-admin-token-0123456789";

async fn seed(db: &tokio_postgres::Client, org: i64, username: &str) {
    db.execute(
        "INSERT INTO mqtt_credentials (organization_id, username, password_hash, password_sealed, allowed_topics)
         VALUES ($1, $2, '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', '\\x00', ARRAY['org/#'])",
        &[&org, &username],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn under_an_organisation_role_another_organisations_rows_are_invisible() {
    let env = TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        ..Options::default()
    })
    .await;
    let engine = env.db().await;
    seed(&engine, 101, "tenant-a-user").await;
    seed(&engine, 202, "tenant-b-user").await;
    let count = |sql: &'static str| {
        let engine = &engine;
        async move { engine.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    // The engine's role (the tables' owner) sees both organisations.
    assert_eq!(count("SELECT count(*) FROM mqtt_credentials").await, 2);
    let bypass: bool = engine
        .query_one(
            "SELECT rolbypassrls FROM pg_roles WHERE rolname = 'fleetflow_tenant'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!bypass, "the tenant role must not bypass RLS");

    let mut c = env.db().await;
    let tx = c.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL ROLE fleetflow_tenant")
        .await
        .unwrap();
    tx.execute("SELECT set_config('app.organization_id', '101', true)", &[])
        .await
        .unwrap();
    let seen = |sql: &'static str| {
        let tx = &tx;
        async move { tx.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        seen("SELECT count(*) FROM mqtt_credentials WHERE organization_id = 202").await,
        0,
        "organisation 101 sees organisation 202's rows"
    );
    assert_eq!(seen("SELECT count(*) FROM mqtt_credentials").await, 1);
    assert_eq!(
        seen("SELECT count(*) FROM mqtt_credentials WHERE organization_id = 101").await,
        1,
        "its own rows stay visible"
    );
    // Writing a row for its own organisation works; for another one the policy refuses it.
    tx.execute(
        "INSERT INTO mqtt_credentials (organization_id, username, password_hash, password_sealed, allowed_topics)
         VALUES (101, 'own', '$argon2id$x', '\\x00', ARRAY['x'])",
        &[],
    )
    .await
    .unwrap();
    let refused = tx
        .execute(
            "INSERT INTO mqtt_credentials (organization_id, username, password_hash, password_sealed, allowed_topics)
             VALUES (202, 'planted', '$argon2id$x', '\\x00', ARRAY['x'])",
            &[],
        )
        .await
        .expect_err("a row planted in another organisation");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused}"
    );
    drop(tx);

    // Through the API: organisation 101's token lists only its own credential.
    let http = reqwest::Client::new();
    let made: Value = http
        .post(format!("{}/api/v1/organizations/101/tokens", env.http))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org_token = made["token"].as_str().expect("a token").to_string();
    let r = http
        .get(format!(
            "{}/api/v1/organizations/101/mqtt-credentials",
            env.http
        ))
        .bearer_auth(&org_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    let names: Vec<&str> = list["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tenant-a-user"]);
    // The request really runs under the tenant role: without its grant, it fails.
    engine
        .batch_execute("REVOKE SELECT ON mqtt_credentials FROM fleetflow_tenant")
        .await
        .unwrap();
    let r = http
        .get(format!(
            "{}/api/v1/organizations/101/mqtt-credentials",
            env.http
        ))
        .bearer_auth(&org_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        500,
        "the handler did not switch to the tenant role"
    );
    let admin = http
        .get(format!(
            "{}/api/v1/organizations/101/mqtt-credentials",
            env.http
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.status(),
        200,
        "the admin token keeps the engine's role"
    );
    engine
        .batch_execute("GRANT SELECT ON mqtt_credentials TO fleetflow_tenant")
        .await
        .unwrap();
}

async fn put_config(env: &TestEnv, product: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(format!(
            "{}/api/v1/products/{product}/mqtt-config",
            env.http
        ))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_products_rows_carry_its_company_and_rls_shows_them_to_that_company_only() {
    let env = TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        ..Options::default()
    })
    .await;
    // A prefix of the product's own: under the file source's prefix, a copy delivered through
    // that source first would bind the device there (no company) before the product claims it.
    let prefix = format!("{}co", env.prefix);
    let base = json!({"host": env.services.mqtt_host, "port": env.services.mqtt_port,
                      "prefix": prefix, "client_id": format!("ff-co-{}", common::random_hex(4))});
    let mut bad = base.clone();
    bad["company_id"] = json!(0);
    let (code, resp) = put_config(&env, "tenant-7", bad).await;
    assert_eq!(code, 400, "{resp}");
    assert_eq!(resp["error"]["field"], "company_id", "{resp}");
    let mut good = base;
    good["company_id"] = json!(7);
    let (code, resp) = put_config(&env, "tenant-7", good).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["config"]["company_id"], 7, "{resp}");

    // The product's source subscribes after the PUT returns: a canary device repeats a status
    // until its row shows the subscription is in place.
    let canary_id = common::random_device();
    let canary = common::TestDevice::connect(&env.services, &prefix, &canary_id).await;
    common::eventually(
        std::time::Duration::from_secs(30),
        "the product's source",
        || async {
            canary.publish("status", r#"{"status":"online"}"#).await;
            let n = env
                .scalar_i64(&format!(
                    "SELECT count(*) FROM devices WHERE device_id = '{canary_id}'"
                ))
                .await;
            (n == 1).then_some(())
        },
    )
    .await;
    let id = common::random_device();
    let dev = common::TestDevice::connect(&env.services, &prefix, &id).await;
    dev.publish("status", r#"{"status":"online","battery_v":3.8}"#)
        .await;
    dev.publish("data", r#"{"type":"reading","seq":1}"#).await;
    dev.publish("data", "not json").await;
    dev.settle().await;
    let engine = env.db().await;
    let companies = |table: &'static str| {
        let (engine, id) = (&engine, id.clone());
        async move {
            engine
                .query(
                    &format!("SELECT company_id FROM {table} WHERE device_id = $1"),
                    &[&id],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, Option<i64>>(0))
                .collect::<Vec<_>>()
        }
    };
    common::eventually(std::time::Duration::from_secs(20), "the rows", || async {
        (companies("sensor_readings").await.len() == 1
            && companies("device_errors").await.len() == 1)
            .then_some(())
    })
    .await;
    for table in [
        "devices",
        "device_status",
        "sensor_readings",
        "device_errors",
    ] {
        assert_eq!(companies(table).await, vec![Some(7)], "{table}");
    }

    let mut c = env.db().await;
    for (company, want) in [("7", 1i64), ("8", 0)] {
        let tx = c.transaction().await.unwrap();
        tx.batch_execute("SET LOCAL ROLE fleetflow_tenant")
            .await
            .unwrap();
        tx.execute("SELECT set_config('app.company_id', $1, true)", &[&company])
            .await
            .unwrap();
        for table in [
            "devices",
            "device_status",
            "sensor_readings",
            "device_errors",
        ] {
            let n: i64 = tx
                .query_one(
                    &format!("SELECT count(*) FROM {table} WHERE device_id = $1"),
                    &[&id],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, want, "company {company} sees {table}");
        }
    }
}
