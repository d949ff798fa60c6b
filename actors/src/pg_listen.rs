//! A reconnecting Postgres `LISTEN`: the source manager, the restart worker, the schedule
//! reloader and the command queue wake on notifications through it.

use tokio_postgres::NoTls;

/// Listens on a Postgres notification `channel` and signals `wake` on each notification,
/// reconnecting after any failure until the task is aborted. Signals are coalesced (a full
/// `wake` channel means a wake-up is already pending), so the queue stays bounded.
pub async fn listen(pg_url: String, channel: &'static str, wake: tokio::sync::mpsc::Sender<()>) {
    use futures::StreamExt;
    loop {
        match tokio_postgres::connect(&pg_url, NoTls).await {
            Ok((client, mut conn)) => {
                let tx = wake.clone();
                let driver = tokio::spawn(async move {
                    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                                let _ = tx.try_send(());
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, channel, "LISTEN connection failed");
                                break;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {channel}")).await {
                    // A reconnect may have missed notifications: wake the consumer once.
                    Ok(()) => {
                        let _ = wake.try_send(());
                        let _ = driver.await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, channel, "LISTEN failed");
                        driver.abort();
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, channel, "LISTEN connection failed"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
