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

/// Drops the database at `url` (made by [`create_database`]), closing its connections. Blocks;
/// callable from inside a runtime (it runs its own on another thread). Failures are printed.
pub fn drop_database(admin_url: &str, url: &str) {
    let Some(name) = url.rsplit('/').next().filter(|n| n.starts_with("ff_test_")) else {
        return;
    };
    let (admin, name) = (admin_url.to_string(), name.to_string());
    let done = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&admin, NoTls).await?;
            tokio::spawn(conn);
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
        })
        .map_err(|e| format!("could not drop test database {name}: {e}"))
    })
    .join();
    if let Ok(Err(e)) = done {
        eprintln!("{e}");
    }
}
