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
