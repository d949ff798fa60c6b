-- Core schema: the tables of PROTOCOL.md §8, with the exact column names of the contract,
-- idempotency keys, indexes for the common queries, and row-level security per company.

CREATE TABLE devices (
    device_id      text PRIMARY KEY,
    company_id     bigint,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    status         text,
    battery_v      double precision,
    rssi           integer,
    uptime_s       bigint,
    fw             text
);
CREATE INDEX devices_last_seen_idx ON devices (last_seen_at DESC);
CREATE INDEX devices_company_idx ON devices (company_id);

CREATE TABLE device_status (
    id             bigserial PRIMARY KEY,
    device_id      text NOT NULL,
    company_id     bigint,
    status         text NOT NULL CHECK (status IN ('online', 'sleeping', 'capturing', 'error', 'offline')),
    pending_count  integer,
    battery_v      double precision,
    rssi           integer,
    uptime_s       bigint,
    extra          jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- Latest status per device.
CREATE INDEX device_status_latest_idx ON device_status (device_id, created_at DESC);

CREATE TABLE sensor_readings (
    id             bigserial PRIMARY KEY,
    device_id      text NOT NULL,
    company_id     bigint,
    seq            bigint,
    capture_id     text,
    temperature_c  double precision,
    humidity_pct   double precision,
    pressure_hpa   double precision,
    gas_kohm       double precision,
    extra          jsonb,
    measured_at    timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- (device_id, seq) is a reading's identity: replays must not create a second row.
CREATE UNIQUE INDEX sensor_readings_seq_uq ON sensor_readings (device_id, seq) WHERE seq IS NOT NULL;
-- A capture's sensor snapshot is stored once per capture.
CREATE UNIQUE INDEX sensor_readings_capture_uq ON sensor_readings (device_id, capture_id) WHERE seq IS NULL AND capture_id IS NOT NULL;
CREATE INDEX sensor_readings_latest_idx ON sensor_readings (device_id, measured_at DESC);

CREATE TABLE captures (
    id                 bigserial PRIMARY KEY,
    device_id          text NOT NULL,
    company_id         bigint,
    device_capture_id  text NOT NULL,
    captured_at        timestamptz NOT NULL,
    image_bytes        bigint NOT NULL,
    total_chunks       integer NOT NULL,
    chunk_size         integer NOT NULL,
    sha256             text,
    ingest_status      text NOT NULL CHECK (ingest_status IN ('assembling', 'stored', 'failed')),
    storage_path       text,
    nack_rounds        integer NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    stored_at          timestamptz,
    UNIQUE (device_id, device_capture_id)
);
CREATE INDEX captures_latest_idx ON captures (device_id, created_at DESC);
CREATE INDEX captures_status_idx ON captures (ingest_status, created_at DESC);

CREATE TABLE device_errors (
    id           bigserial PRIMARY KEY,
    device_id    text NOT NULL,
    company_id   bigint,
    error_code   integer NOT NULL,
    message      text NOT NULL,
    details      jsonb,
    occurred_at  timestamptz NOT NULL DEFAULT now()
);
-- Errors by code and time, and per device.
CREATE INDEX device_errors_code_idx ON device_errors (error_code, occurred_at DESC);
CREATE INDEX device_errors_device_idx ON device_errors (device_id, occurred_at DESC);

CREATE TABLE device_publish_log (
    id           bigserial PRIMARY KEY,
    device_id    text NOT NULL,
    company_id   bigint,
    topic        text NOT NULL,
    direction    text NOT NULL CHECK (direction IN ('in', 'out')),
    payload      jsonb,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_publish_log_device_idx ON device_publish_log (device_id, received_at DESC);

CREATE TABLE device_commands (
    id            text PRIMARY KEY,
    device_id     text NOT NULL,
    company_id    bigint,
    name          text NOT NULL,
    args          jsonb NOT NULL DEFAULT '{}'::jsonb,
    status        text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'succeeded', 'failed', 'expired')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    completed_at  timestamptz,
    result        jsonb
);
CREATE INDEX device_commands_device_idx ON device_commands (device_id, created_at DESC);

-- Row-level security: a role whose `app.company_id` setting matches sees only its company's
-- rows. The engine's role owns the tables (and has BYPASSRLS), so it is not restricted.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['devices', 'device_status', 'sensor_readings', 'captures',
                             'device_errors', 'device_publish_log', 'device_commands']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I USING (company_id = NULLIF(current_setting(''app.company_id'', true), '''')::bigint)',
            t || '_company_isolation', t);
    END LOOP;
END $$;
