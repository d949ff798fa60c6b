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
