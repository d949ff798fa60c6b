//! One statement per table per batch: rows are passed as arrays and expanded with `UNNEST`, so a
//! batch of any size is one round trip with one prepared statement, and `ON CONFLICT` keeps
//! replays idempotent.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use serde_json::Value;

use super::rows::{CaptureRow, IngestStatus, LogPayload, PendingRow, Row, Table};
use super::SinkError;

const INSERT_STATUS: &str = "INSERT INTO device_status (device_id, status, pending_count, battery_v, rssi, uptime_s, extra, created_at, company_id)
 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::float8[], $5::int4[], $6::int8[], $7::jsonb[], $8::timestamptz[], $9::int8[])";

const UPSERT_DEVICES: &str = "INSERT INTO devices (device_id, first_seen_at, last_seen_at, status, battery_v, rssi, uptime_s, fw, wire_format, company_id)
 SELECT d, t, t, s, b, r, u, f, w, c FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::float8[], $5::int4[], $6::int8[], $7::text[], $8::text[], $9::int8[]) AS x(d, t, s, b, r, u, f, w, c)
 ON CONFLICT (device_id) DO UPDATE SET
   company_id = COALESCE(EXCLUDED.company_id, devices.company_id),
   last_seen_at = GREATEST(devices.last_seen_at, EXCLUDED.last_seen_at),
   status = COALESCE(EXCLUDED.status, devices.status),
   wire_format = COALESCE(EXCLUDED.wire_format, devices.wire_format),
   battery_v = COALESCE(EXCLUDED.battery_v, devices.battery_v),
   rssi = COALESCE(EXCLUDED.rssi, devices.rssi),
   uptime_s = COALESCE(EXCLUDED.uptime_s, devices.uptime_s),
   fw = COALESCE(EXCLUDED.fw, devices.fw)";

const INSERT_READINGS: &str = "INSERT INTO sensor_readings (device_id, seq, capture_id, temperature_c, humidity_pct, pressure_hpa, gas_kohm, extra, measured_at, company_id)
 SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::jsonb[], $9::timestamptz[], $10::int8[])
 ON CONFLICT DO NOTHING";

const UPSERT_CAPTURES: &str = "INSERT INTO captures (device_id, device_capture_id, captured_at, image_bytes, total_chunks, chunk_size, sha256, ingest_status, storage_path, nack_rounds, stored_at, wire_format, meta, company_id)
 SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::int8[], $5::int4[], $6::int4[], $7::text[], $8::text[], $9::text[], $10::int4[], $11::timestamptz[], $12::text[], $13::jsonb[], $14::int8[])
 ON CONFLICT (device_id, device_capture_id) DO UPDATE SET
   company_id = COALESCE(captures.company_id, EXCLUDED.company_id),
   captured_at = EXCLUDED.captured_at, image_bytes = EXCLUDED.image_bytes, total_chunks = EXCLUDED.total_chunks,
   chunk_size = EXCLUDED.chunk_size, sha256 = EXCLUDED.sha256, ingest_status = EXCLUDED.ingest_status,
   storage_path = EXCLUDED.storage_path, nack_rounds = EXCLUDED.nack_rounds, stored_at = EXCLUDED.stored_at,
   wire_format = EXCLUDED.wire_format, meta = COALESCE(EXCLUDED.meta, captures.meta)
 WHERE captures.ingest_status <> 'stored'";

/// A device's format, from its captures (for commands sent by the API or as rows).
const DEVICES_FORMAT: &str = "UPDATE devices d SET wire_format = x.f
 FROM UNNEST($1::text[], $2::text[]) AS x(id, f)
 WHERE d.device_id = x.id AND d.wire_format IS DISTINCT FROM x.f";

const UPSERT_WAKES: &str = "INSERT INTO device_schedules (device_id, next_wake_at)
 SELECT * FROM UNNEST($1::text[], $2::timestamptz[])
 ON CONFLICT (device_id) DO UPDATE SET next_wake_at = EXCLUDED.next_wake_at";

const INSERT_ERRORS: &str =
    "INSERT INTO device_errors (device_id, error_code, message, details, occurred_at, company_id)
 SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::jsonb[], $5::timestamptz[], $6::int8[])";

const UPDATE_COMMANDS: &str = "UPDATE device_commands c SET status = CASE WHEN x.ok THEN 'succeeded' ELSE 'failed' END,
   result = x.result, completed_at = x.t
 FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::jsonb[], $5::timestamptz[]) AS x(d, id, ok, result, t)
 WHERE c.id = x.id AND c.device_id = x.d";

/// Payloads go as text and become `jsonb` in the statement (the log keeps them as received).
const INSERT_PUBLISH_LOG: &str = "INSERT INTO device_publish_log (device_id, topic, direction, payload, received_at)
 SELECT d, t, dir, p::jsonb, at FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) AS x(d, t, dir, p, at)";

const INSERT_DEAD_LETTERS: &str = "INSERT INTO dead_letters (device_id, topic, payload, reason, source, received_at)
 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::timestamptz[])";

const INSERT_TELEMETRY: &str = "INSERT INTO telemetry (device_id, product_id, subscription_id, topic, payload, received_at, company_id)
 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::jsonb[], $6::timestamptz[], $7::int8[])";

/// Columns of the `devices` upsert, deduplicated per device (latest wins).
#[derive(Default)]
struct DeviceCols<'a> {
    idx: HashMap<&'a str, usize>,
    ids: Vec<&'a str>,
    at: Vec<DateTime<Utc>>,
    status: Vec<Option<&'a str>>,
    battery: Vec<Option<f64>>,
    rssi: Vec<Option<i32>>,
    uptime: Vec<Option<i64>>,
    fw: Vec<Option<&'a str>>,
    format: Vec<Option<&'a str>>,
    company: Vec<Option<i64>>,
}

impl<'a> DeviceCols<'a> {
    /// Records the device's company (after `touch`), when known: the latest wins, as a
    /// product that claims a device or a corrected `company_id` moves it.
    fn owned_by(&mut self, id: &str, company: Option<i64>) {
        if let Some(&i) = self.idx.get(id) {
            self.company[i] = company.or(self.company[i]);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn touch(
        &mut self,
        id: &'a str,
        at: DateTime<Utc>,
        status: Option<&'a str>,
        battery: Option<f64>,
        rssi: Option<i32>,
        uptime: Option<i64>,
        fw: Option<&'a str>,
        format: Option<&'a str>,
    ) {
        match self.idx.get(id) {
            Some(&i) => {
                if at >= self.at[i] {
                    self.at[i] = at;
                    self.status[i] = status.or(self.status[i]);
                    self.battery[i] = battery.or(self.battery[i]);
                    self.rssi[i] = rssi.or(self.rssi[i]);
                    self.uptime[i] = uptime.or(self.uptime[i]);
                    self.fw[i] = fw.or(self.fw[i]);
                    self.format[i] = format.or(self.format[i]);
                }
            }
            None => {
                self.idx.insert(id, self.ids.len());
                self.ids.push(id);
                self.at.push(at);
                self.status.push(status);
                self.battery.push(battery);
                self.rssi.push(rssi);
                self.uptime.push(uptime);
                self.fw.push(fw);
                self.format.push(format);
                self.company.push(None);
            }
        }
    }

    async fn write(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), SinkError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let stmt = tx.prepare_cached(UPSERT_DEVICES).await?;
        tx.execute(
            &stmt,
            &[
                &self.ids,
                &self.at,
                &self.status,
                &self.battery,
                &self.rssi,
                &self.uptime,
                &self.fw,
                &self.format,
                &self.company,
            ],
        )
        .await?;
        Ok(())
    }
}

fn extra_json(m: &serde_json::Map<String, Value>) -> Value {
    if m.is_empty() {
        Value::Null
    } else {
        Value::Object(m.clone())
    }
}

/// The `sensor_readings` batch as column arrays (one per statement parameter), plus the
/// deduplicated `devices` touches. Public so that the encoder can be benchmarked.
pub struct ReadingColumns<'a> {
    ids: Vec<&'a str>,
    seq: Vec<Option<i64>>,
    capture: Vec<Option<&'a str>>,
    temperature: Vec<Option<f64>>,
    humidity: Vec<Option<f64>>,
    pressure: Vec<Option<f64>>,
    gas: Vec<Option<f64>>,
    extra: Vec<Value>,
    measured_at: Vec<DateTime<Utc>>,
    company: Vec<Option<i64>>,
    devices: DeviceCols<'a>,
}

impl<'a> ReadingColumns<'a> {
    /// Splits a batch into columns.
    pub fn build(batch: &'a [PendingRow]) -> Self {
        let n = batch.len();
        let mut c = Self {
            ids: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            capture: Vec::with_capacity(n),
            temperature: Vec::with_capacity(n),
            humidity: Vec::with_capacity(n),
            pressure: Vec::with_capacity(n),
            gas: Vec::with_capacity(n),
            extra: Vec::with_capacity(n),
            measured_at: Vec::with_capacity(n),
            company: Vec::with_capacity(n),
            devices: DeviceCols::default(),
        };
        for p in batch {
            let Row::Reading(r) = &p.row else { continue };
            c.ids.push(r.device_id.as_str());
            c.seq.push(r.seq);
            c.capture.push(r.capture_id.as_deref());
            c.temperature.push(r.values.temperature_c);
            c.humidity.push(r.values.humidity_pct);
            c.pressure.push(r.values.pressure_hpa);
            c.gas.push(r.values.gas_kohm);
            c.extra.push(extra_json(&r.extra));
            c.measured_at.push(r.measured_at);
            c.company.push(p.company_id);
            if r.touch_device {
                c.devices.touch(
                    r.device_id.as_str(),
                    r.measured_at,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                );
                c.devices.owned_by(r.device_id.as_str(), p.company_id);
            }
        }
        c
    }

    /// The statement parameters, in order.
    pub fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 10] {
        [
            &self.ids,
            &self.seq,
            &self.capture,
            &self.temperature,
            &self.humidity,
            &self.pressure,
            &self.gas,
            &self.extra,
            &self.measured_at,
            &self.company,
        ]
    }

    /// Distinct devices in the batch.
    pub fn device_count(&self) -> usize {
        self.devices.ids.len()
    }
}

/// Writes one batch of rows, all of `table`, in one transaction.
pub async fn write_batch(
    client: &mut Client,
    table: Table,
    batch: &[PendingRow],
) -> Result<u64, SinkError> {
    let tx = client.transaction().await?;
    let n = match table {
        Table::Status => write_status(&tx, batch).await?,
        Table::Readings => write_readings(&tx, batch).await?,
        Table::Captures => write_captures(&tx, batch).await?,
        Table::Schedules => write_schedules(&tx, batch).await?,
        Table::Errors => write_errors(&tx, batch).await?,
        Table::Commands => write_commands(&tx, batch).await?,
        Table::Telemetry => write_telemetry(&tx, batch).await?,
        Table::PublishLog => write_publish_log(&tx, batch).await?,
        Table::DeadLetters => write_dead_letters(&tx, batch).await?,
    };
    tx.commit().await?;
    Ok(n)
}

/// The `Status` batch.
async fn write_status(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[PendingRow],
) -> Result<u64, SinkError> {
    let mut ids = Vec::with_capacity(batch.len());
    let (mut st, mut pc, mut bv, mut rs, mut up, mut ex, mut at) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut company = Vec::with_capacity(batch.len());
    let mut dev = DeviceCols::default();
    for p in batch {
        let Row::Status(s) = &p.row else { continue };
        ids.push(s.device_id.as_str());
        st.push(s.status.as_str());
        pc.push(s.pending_count);
        bv.push(s.battery_v);
        rs.push(s.rssi);
        up.push(s.uptime_s);
        ex.push(extra_json(&s.extra));
        at.push(s.created_at);
        company.push(p.company_id);
        dev.touch(
            s.device_id.as_str(),
            s.created_at,
            Some(s.status.as_str()),
            s.battery_v,
            s.rssi,
            s.uptime_s,
            s.fw.as_deref(),
            s.wire_format,
        );
        dev.owned_by(s.device_id.as_str(), p.company_id);
    }
    let stmt = tx.prepare_cached(INSERT_STATUS).await?;
    let n = tx
        .execute(&stmt, &[&ids, &st, &pc, &bv, &rs, &up, &ex, &at, &company])
        .await?;
    dev.write(tx).await?;
    Ok(n)
}

/// The `Readings` batch.
async fn write_readings(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[PendingRow],
) -> Result<u64, SinkError> {
    let cols = ReadingColumns::build(batch);
    let stmt = tx.prepare_cached(INSERT_READINGS).await?;
    let n = tx.execute(&stmt, &cols.params()).await?;
    cols.devices.write(tx).await?;
    Ok(n)
}

/// The `Captures` batch.
async fn write_captures(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[PendingRow],
) -> Result<u64, SinkError> {
    // One row per capture per statement (ON CONFLICT DO UPDATE may touch a row once);
    // `stored` wins over `failed`.
    let mut latest: HashMap<(&str, &str), (&CaptureRow, Option<i64>)> = HashMap::new();
    for p in batch {
        let Row::Capture(c) = &p.row else { continue };
        let key = (c.device_id.as_str(), c.capture_id.as_str());
        match latest.get(&key) {
            Some((prev, _)) if prev.status == IngestStatus::Stored => {}
            _ => {
                latest.insert(key, (c, p.company_id));
            }
        }
    }
    let (rows, company): (Vec<&CaptureRow>, Vec<Option<i64>>) = latest.into_values().unzip();
    let ids: Vec<&str> = rows.iter().map(|c| c.device_id.as_str()).collect();
    let cid: Vec<&str> = rows.iter().map(|c| c.capture_id.as_str()).collect();
    let cat: Vec<DateTime<Utc>> = rows.iter().map(|c| c.captured_at).collect();
    let ib: Vec<i64> = rows.iter().map(|c| c.image_bytes).collect();
    let tc: Vec<i32> = rows.iter().map(|c| c.total_chunks).collect();
    let cs: Vec<i32> = rows.iter().map(|c| c.chunk_size).collect();
    let sha: Vec<Option<&str>> = rows.iter().map(|c| c.sha256.as_deref()).collect();
    let st: Vec<&str> = rows.iter().map(|c| c.status.as_str()).collect();
    let sp: Vec<Option<&str>> = rows.iter().map(|c| c.storage_path.as_deref()).collect();
    let nr: Vec<i32> = rows.iter().map(|c| c.nack_rounds).collect();
    let sat: Vec<Option<DateTime<Utc>>> = rows.iter().map(|c| c.stored_at).collect();
    let wf: Vec<&str> = rows.iter().map(|c| c.format.as_str()).collect();
    let meta: Vec<Option<&Value>> = rows.iter().map(|c| c.meta.as_ref()).collect();
    let stmt = tx.prepare_cached(UPSERT_CAPTURES).await?;
    let n = tx
        .execute(
            &stmt,
            &[
                &ids, &cid, &cat, &ib, &tc, &cs, &sha, &st, &sp, &nr, &sat, &wf, &meta, &company,
            ],
        )
        .await?;
    let stmt = tx.prepare_cached(DEVICES_FORMAT).await?;
    tx.execute(&stmt, &[&ids, &wf]).await?;
    Ok(n)
}

/// The `Schedules` batch.
async fn write_schedules(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[PendingRow],
) -> Result<u64, SinkError> {
    let mut latest: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for p in batch {
        let Row::Wake(w) = &p.row else { continue };
        latest.insert(w.device_id.as_str(), w.next_wake_at);
    }
    let (ids, at): (Vec<&str>, Vec<DateTime<Utc>>) = latest.into_iter().unzip();
    let stmt = tx.prepare_cached(UPSERT_WAKES).await?;
    Ok(tx.execute(&stmt, &[&ids, &at]).await?)
}

/// The `Errors` batch.
async fn write_errors(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[PendingRow],
) -> Result<u64, SinkError> {
    let (mut ids, mut code, mut msg, mut det, mut at) = (vec![], vec![], vec![], vec![], vec![]);
    let mut company = Vec::with_capacity(batch.len());
    for p in batch {
        let Row::Error(e) = &p.row else { continue };
        company.push(p.company_id);
        ids.push(e.device_id.as_str());
        code.push(e.code.code());
        msg.push(e.message.as_str());
        det.push(&e.details);
        at.push(e.occurred_at);
    }
    let stmt = tx.prepare_cached(INSERT_ERRORS).await?;
    Ok(tx
        .execute(&stmt, &[&ids, &code, &msg, &det, &at, &company])
        .await?)
}

/// The `Commands` batch.
async fn write_commands(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[PendingRow],
) -> Result<u64, SinkError> {
    let (mut ids, mut cid, mut ok, mut res, mut at) = (vec![], vec![], vec![], vec![], vec![]);
    for p in batch {
        let Row::CommandResult(c) = &p.row else {
            continue;
        };
        ids.push(c.device_id.as_str());
        cid.push(c.command_id.as_str());
        ok.push(c.ok);
        res.push(&c.result);
        at.push(c.completed_at);
    }
    let stmt = tx.prepare_cached(UPDATE_COMMANDS).await?;
    Ok(tx.execute(&stmt, &[&ids, &cid, &ok, &res, &at]).await?)
}

/// The `Telemetry` batch.
async fn write_telemetry(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[PendingRow],
) -> Result<u64, SinkError> {
    let (mut ids, mut prod, mut sub, mut topic, mut body, mut at) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut company = Vec::with_capacity(batch.len());
    for p in batch {
        let Row::Telemetry(t) = &p.row else { continue };
        company.push(p.company_id);
        ids.push(t.device_id.as_str());
        prod.push(&*t.product_id);
        sub.push(t.subscription_id);
        topic.push(t.topic.as_str());
        body.push(&t.payload);
        at.push(t.received_at);
    }
    let stmt = tx.prepare_cached(INSERT_TELEMETRY).await?;
    Ok(tx
        .execute(&stmt, &[&ids, &prod, &sub, &topic, &body, &at, &company])
        .await?)
}

/// The `PublishLog` batch.
async fn write_publish_log(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[PendingRow],
) -> Result<u64, SinkError> {
    let (mut ids, mut topic, mut dir, mut body, mut at) = (vec![], vec![], vec![], vec![], vec![]);
    for p in batch {
        let Row::PublishLog(l) = &p.row else {
            continue;
        };
        ids.push(l.device_id.as_str());
        topic.push(String::from_utf8_lossy(&l.topic));
        dir.push(l.direction.as_str());
        body.push(match &l.payload {
            // Checked as UTF-8 JSON when the row was made.
            LogPayload::Json(b) => String::from_utf8_lossy(b),
            LogPayload::Summary(v) => std::borrow::Cow::Owned(v.to_string()),
        });
        at.push(l.at);
    }
    let stmt = tx.prepare_cached(INSERT_PUBLISH_LOG).await?;
    Ok(tx.execute(&stmt, &[&ids, &topic, &dir, &body, &at]).await?)
}

/// The `DeadLetters` batch: topic and payload as they arrived.
async fn write_dead_letters(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[PendingRow],
) -> Result<u64, SinkError> {
    let (mut ids, mut topic, mut body, mut why, mut src, mut at) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for p in batch {
        let Row::DeadLetter(d) = &p.row else {
            continue;
        };
        ids.push(d.device_id.as_str());
        topic.push(String::from_utf8_lossy(&d.topic));
        body.push(&d.payload[..]);
        why.push(d.reason);
        src.push(&*d.source);
        at.push(d.received_at);
    }
    let stmt = tx.prepare_cached(INSERT_DEAD_LETTERS).await?;
    Ok(tx
        .execute(&stmt, &[&ids, &topic, &body, &why, &src, &at])
        .await?)
}
