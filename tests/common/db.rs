//! Database helpers: a connected client and a fresh database per test.

use tokio_postgres::NoTls;

use super::services::random_hex;

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

/// Creates a fresh database and returns its URL.
pub async fn create_database(admin_url: &str) -> String {
    let name = format!("ff_test_{}", random_hex(12));
    let c = connect(admin_url).await;
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    match admin_url.rfind('/') {
        Some(i) => format!("{}/{name}", &admin_url[..i]),
        None => panic!("bad admin url {admin_url}"),
    }
}
