-- Refused admin requests (issue 13, audit): a wrong or missing token, a forbidden organisation,
-- so that an operator can see who tried what. Restarts refused by the cooldown are recorded in
-- service_restart_requests itself, as 'rejected' rows. Both are also counted
-- (fleetflow_admin_refused_total); rows here are rate-limited by the engine, counts are not.
CREATE TABLE admin_audit (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    -- The token's name when one matched (a forbidden request), else NULL.
    actor      text,
    -- api, restart, restart_webhook or organization.
    entry      text NOT NULL,
    -- unauthorized or forbidden.
    reason     text NOT NULL,
    -- Method and path, e.g. "POST /api/v1/restarts".
    action     text NOT NULL,
    -- The client's address as the engine saw it, when known.
    remote     text
);
CREATE INDEX admin_audit_at_idx ON admin_audit (at DESC);

-- The message log (device_publish_log, written since this release) is paged per device by id
-- (GET /api/v1/devices/{id}/messages): index that, in place of V1's (device_id, received_at),
-- which nothing reads, so each log row still costs one btree.
DROP INDEX IF EXISTS device_publish_log_device_idx;
CREATE INDEX IF NOT EXISTS device_publish_log_device_id_idx ON device_publish_log (device_id, id);
