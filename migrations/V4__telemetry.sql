-- Generic JSON telemetry written by `store_json` subscription actions.

CREATE TABLE telemetry (
    id               bigserial PRIMARY KEY,
    device_id        text NOT NULL,
    company_id       bigint,
    product_id       text NOT NULL,
    subscription_id  bigint,
    topic            text NOT NULL,
    payload          jsonb NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX telemetry_device_idx ON telemetry (device_id, received_at DESC);
CREATE INDEX telemetry_product_idx ON telemetry (product_id, received_at DESC);

ALTER TABLE telemetry ENABLE ROW LEVEL SECURITY;
CREATE POLICY telemetry_company_isolation ON telemetry
    USING (company_id = NULLIF(current_setting('app.company_id', true), '')::bigint);
