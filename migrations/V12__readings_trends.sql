-- Sensor trends and fleet analytics (docs/trends.md has the queries, the plans and their
-- timings on a seeded table).
--
-- On a large existing database these statements lock out ingest while they build (a plain
-- CREATE INDEX blocks inserts into its table). Build them first without a lock, e.g.
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS sensor_readings_trends_idx ON sensor_readings ...;
-- with the same names and definitions as below; this migration then finds them and does nothing.

-- GET /api/v1/devices/{id}/readings: one device's readings in a time range, aggregated. The
-- INCLUDE columns make it an index-only scan: at 100M rows a device's readings are spread over
-- as many heap pages as there are readings (ingest interleaves devices), and reading those pages
-- is what costs, not the index. It also serves the latest-reading lookups (a backward scan), so
-- V1's sensor_readings_latest_idx (device_id, measured_at DESC) goes: every insert paid for both.
CREATE INDEX IF NOT EXISTS sensor_readings_trends_idx
    ON sensor_readings (device_id, measured_at)
    INCLUDE (temperature_c, humidity_pct, pressure_hpa, gas_kohm);
DROP INDEX IF EXISTS sensor_readings_latest_idx;

-- The same for the status history (battery and RSSI trends); V1's device_status_latest_idx
-- (device_id, created_at DESC) found the rows but needed a heap page per row, and goes too.
CREATE INDEX IF NOT EXISTS device_status_trends_idx
    ON device_status (device_id, created_at)
    INCLUDE (battery_v, rssi);
DROP INDEX IF EXISTS device_status_latest_idx;

-- Fleet-wide queries by time (Grafana's fleet panels): readings arrive roughly in measured_at
-- order, so a BRIN of a few megabytes at 100M rows narrows a day's query to that day's pages
-- instead of a sequential scan of the table. autosummarize: new page ranges are summarised as
-- they fill, not at the next vacuum. (V11's btree on created_at serves retention, not this.)
CREATE INDEX IF NOT EXISTS sensor_readings_measured_brin
    ON sensor_readings USING brin (measured_at) WITH (pages_per_range = 32, autosummarize = on);

-- GET /api/v1/stats/captures: captures per day or week over the whole fleet, by status, as an
-- index-only scan. captured_at is the device's clock, so order on disk is not guaranteed and a
-- BRIN would not do.
CREATE INDEX IF NOT EXISTS captures_captured_at_idx
    ON captures (captured_at) INCLUDE (ingest_status);

-- Index-only scans skip the heap only for pages the visibility map marks all-visible, which
-- vacuum does. For an insert-mostly table autovacuum waits for 20% of the table in new rows by
-- default: 20M rows at 100M, days of readings whose queries would each read the heap again.
-- Vacuum these two after 1% (+10000) instead; on insert-only pages it is cheap.
ALTER TABLE sensor_readings SET (autovacuum_vacuum_insert_scale_factor = 0.01,
                                 autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE device_status SET (autovacuum_vacuum_insert_scale_factor = 0.01,
                               autovacuum_vacuum_insert_threshold = 10000);
