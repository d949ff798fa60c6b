-- Retention (`[retention]`, docs/retention.md). A capture whose image the retention task deleted
-- from object storage keeps its row, marked with the time of the deletion; nothing else in the
-- row changes. The other tables' old rows are deleted outright.
--
-- On a large existing database the CREATE INDEX statements lock out ingest into their table
-- while they build. Build them first without a lock, e.g.
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS device_errors_occurred_idx ON device_errors (occurred_at);
-- with the same names and definitions as below; this migration then finds them and does nothing.

ALTER TABLE captures ADD COLUMN IF NOT EXISTS deleted_at timestamptz;

-- The candidates: stored captures whose object is still there, oldest first by the time the
-- engine stored them. Partial, so it holds only the rows retention may still act on and shrinks
-- as they are marked.
CREATE INDEX IF NOT EXISTS captures_retention_idx ON captures (created_at)
    WHERE ingest_status = 'stored' AND deleted_at IS NULL;

-- Rows older than the cutoff, by the time the engine wrote them (never the device's clock),
-- for the batched deletes. The two tables written on every message get a BRIN (rows arrive in
-- this order, so a few kilobytes narrow the delete to the old pages, and ingest pays next to
-- nothing for it); device_errors is small and rate-limited, so a btree.
CREATE INDEX IF NOT EXISTS sensor_readings_created_brin
    ON sensor_readings USING brin (created_at) WITH (autosummarize = on);
CREATE INDEX IF NOT EXISTS device_errors_occurred_idx ON device_errors (occurred_at);
CREATE INDEX IF NOT EXISTS device_publish_log_received_brin
    ON device_publish_log USING brin (received_at) WITH (autosummarize = on);
