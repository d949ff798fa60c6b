-- The company (tenant) a product belongs to. The engine writes it as `company_id` on the rows of
-- that product's devices (devices, device_status, sensor_readings, captures, device_errors,
-- telemetry), so that the row-level security policies on `app.company_id` (V1, V4) apply.
ALTER TABLE mqtt_configs ADD COLUMN company_id bigint CHECK (company_id > 0);
