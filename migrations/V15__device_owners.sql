-- The owner of each device id: the source (a product id, or `default` for the file-configured
-- source) that first delivered a message for it. Persisted at first sight and kept across idle
-- passivation, actor restarts, source removal and engine restarts, so that another tenant's
-- source can never write into this device's rows. An operator moves a device to another
-- product by deleting its row (`DELETE /api/v1/devices/{id}/owner`). A binding to `default` (the
-- file-configured source, no tenant) is taken over by the first product source that delivers
-- the device.
CREATE TABLE device_owners (
    device_id text PRIMARY KEY,
    source    text        NOT NULL,
    bound_at  timestamptz NOT NULL DEFAULT now()
);
