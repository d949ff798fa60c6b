//! `fleetflow rotate-secret-key`: re-seals every stored broker password under a new key, in one
//! transaction (all or nothing). Run it with the current key in `FLEETFLOW_SECRET_KEY`, then
//! restart the engines with the new key.

use tokio_postgres::NoTls;

use crate::config::Config;
use crate::secrets::{SecretError, SecretKey};

/// Rotation failures.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// Key problems.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Database.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A password that the current key cannot open.
    #[error("product {0}: {1}")]
    Row(String, SecretError),
}

/// Re-seals every password from `old` to `new`; returns how many.
pub async fn rotate(cfg: &Config, old: &SecretKey, new: &SecretKey) -> Result<usize, RotateError> {
    let (mut client, conn) = tokio_postgres::connect(&cfg.postgres.url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let tx = client.transaction().await?;
    let rows = tx
        .query("SELECT product_id, password_encrypted FROM mqtt_configs WHERE password_encrypted IS NOT NULL FOR UPDATE", &[])
        .await?;
    let mut n = 0;
    for r in rows {
        let product: String = r.get(0);
        let sealed: Vec<u8> = r.get(1);
        let context = format!("product:{product}");
        let plain = old
            .open(&sealed, &context)
            .map_err(|e| RotateError::Row(product.clone(), e))?;
        let resealed = new.seal(&plain, &context);
        tx.execute(
            "UPDATE mqtt_configs SET password_encrypted = $2 WHERE product_id = $1",
            &[&product, &resealed],
        )
        .await?;
        n += 1;
    }
    tx.commit().await?;
    Ok(n)
}
