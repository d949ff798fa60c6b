//! Which source owns each device id, kept in memory for the data path and persisted in
//! `device_owners` (loaded when the router starts, new bindings written in batches). A binding
//! outlives the device's actor: idle passivation, a restart or a removed source do not free the
//! id for another tenant. When another engine process bound the id first, the database's
//! answer wins and replaces the binding made here.
//!
//! A binding to [`DEFAULT_SOURCE`] (the file-configured source: the operator's own, no tenant)
//! is provisional: the first product source that delivers the device claims it, which is how a
//! fleet moves from the `[mqtt]` file config to a product's config. A product's binding is
//! never taken by another source.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use fleetflow_protocol::ids::DeviceId;

/// The name of the file-configured source (`[mqtt]`), whose bindings a product may claim.
pub const DEFAULT_SOURCE: &str = "default";

/// The bindings, and those not written yet.
#[derive(Default)]
pub(super) struct Owners {
    map: HashMap<DeviceId, Arc<str>>,
    unsaved: Vec<(DeviceId, Arc<str>)>,
}

/// Why the bindings could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OwnersError {
    /// No connection from the pool.
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The query failed.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl Owners {
    /// The source that owns `id`, if it is bound.
    pub(super) fn get(&self, id: &DeviceId) -> Option<&Arc<str>> {
        self.map.get(id)
    }

    /// Whether `source` may take a device bound to `owner`: only a product taking one of the
    /// default source's.
    pub(super) fn may_claim(owner: &str, source: &str) -> bool {
        owner == DEFAULT_SOURCE && source != DEFAULT_SOURCE
    }

    /// Binds `id` to `source` (first sight), to be written with the next batch.
    pub(super) fn bind(&mut self, id: DeviceId, source: Arc<str>) {
        self.unsaved.push((id.clone(), source.clone()));
        self.map.insert(id, source);
    }

    /// Forgets `id`'s binding (an operator moved the device): its next message binds it again.
    pub(super) fn forget(&mut self, id: &DeviceId) {
        self.map.remove(id);
        self.unsaved.retain(|(d, _)| d != id);
    }

    /// Takes the bindings not written yet.
    pub(super) fn take_unsaved(&mut self) -> Vec<(DeviceId, Arc<str>)> {
        std::mem::take(&mut self.unsaved)
    }

    /// Adds bindings read from the database (they win over what was bound here).
    pub(super) fn merge(&mut self, rows: Vec<(DeviceId, Arc<str>)>) {
        self.map.extend(rows);
    }

    /// Bound device ids.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Every binding in `device_owners`.
pub(super) async fn load(pool: Pool) -> Result<Vec<(DeviceId, Arc<str>)>, OwnersError> {
    let c = pool.get().await?;
    let rows = c
        .query("SELECT device_id, source FROM device_owners", &[])
        .await?;
    let mut sources: HashMap<String, Arc<str>> = HashMap::new();
    Ok(rows
        .iter()
        .filter_map(|r| {
            let id = DeviceId::parse(r.get::<_, &str>("device_id")).ok()?;
            let s: String = r.get("source");
            let s = sources.entry(s.clone()).or_insert_with(|| Arc::from(s));
            Some((id, s.clone()))
        })
        .collect())
}

/// Writes new bindings; returns those where the database already held another source (bound
/// first by another engine process), with that source.
pub(super) async fn save(
    pool: Pool,
    batch: Vec<(DeviceId, Arc<str>)>,
) -> Result<Vec<(DeviceId, Arc<str>)>, OwnersError> {
    // One row per device (the latest binding): ON CONFLICT DO UPDATE may touch a row once.
    let mut latest: HashMap<&DeviceId, &Arc<str>> = HashMap::new();
    for (d, s) in &batch {
        latest.insert(d, s);
    }
    let batch: Vec<(DeviceId, Arc<str>)> = latest
        .into_iter()
        .map(|(d, s)| (d.clone(), s.clone()))
        .collect();
    let c = pool.get().await?;
    let ids: Vec<&str> = batch.iter().map(|(d, _)| d.as_str()).collect();
    let sources: Vec<&str> = batch.iter().map(|(_, s)| &**s).collect();
    c.execute(
        "INSERT INTO device_owners (device_id, source) SELECT * FROM UNNEST($1::text[], $2::text[])
         ON CONFLICT (device_id) DO UPDATE SET source = EXCLUDED.source, bound_at = now()
         WHERE device_owners.source = 'default' AND EXCLUDED.source <> 'default'",
        &[&ids, &sources],
    )
    .await?;
    let rows = c
        .query(
            "SELECT o.device_id, o.source FROM device_owners o JOIN UNNEST($1::text[], $2::text[]) AS b(d, s) ON o.device_id = b.d WHERE o.source <> b.s",
            &[&ids, &sources],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let id = DeviceId::parse(r.get::<_, &str>("device_id")).ok()?;
            Some((id, Arc::from(r.get::<_, &str>("source"))))
        })
        .collect())
}
