-- Restart requests: made over HTTP or as rows, executed in process, and kept as the audit trail.

CREATE TABLE service_restart_requests (
    id            bigserial PRIMARY KEY,
    target        text NOT NULL,
    requested_by  text NOT NULL DEFAULT current_user,
    reason        text,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'completed', 'failed', 'rejected')),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    completed_at  timestamptz,
    result        jsonb
);
CREATE INDEX service_restart_requests_pending_idx ON service_restart_requests (id) WHERE status = 'pending';
CREATE INDEX service_restart_requests_target_idx ON service_restart_requests (target, requested_at DESC);

-- Requests a restart, enforcing the cooldown per target: a second request for the same target
-- within the cooldown (default 5 minutes) raises an error. With p_claim the row starts as
-- 'running' (the HTTP path executes it itself); otherwise it is 'pending' for the engine's worker.
CREATE FUNCTION request_service_restart(
    p_target text,
    p_reason text DEFAULT NULL,
    p_requested_by text DEFAULT NULL,
    p_cooldown interval DEFAULT interval '5 minutes',
    p_claim boolean DEFAULT false
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    last_at timestamptz;
    new_id bigint;
BEGIN
    IF p_target IS NULL OR p_target !~ '^(device:[^:/+#[:space:]]{1,64}|source:[A-Za-z0-9._-]{1,64}|sink:(postgres|objects)|pipeline)$' THEN
        RAISE EXCEPTION 'invalid restart target %', p_target
            USING ERRCODE = '22023', HINT = 'use device:<id>, source:<product_id>, sink:postgres, sink:objects or pipeline';
    END IF;
    -- Serialise requests for one target so the cooldown check cannot race.
    PERFORM pg_advisory_xact_lock(hashtext('fleetflow-restart:' || p_target));
    SELECT max(requested_at) INTO last_at FROM service_restart_requests
     WHERE target = p_target AND status IN ('pending', 'running', 'completed')
       AND requested_at > now() - p_cooldown;
    IF last_at IS NOT NULL THEN
        RAISE EXCEPTION 'restart of % was already requested at %; the cooldown is %', p_target, last_at, p_cooldown
            USING ERRCODE = 'P0001', HINT = format('retry after %s', last_at + p_cooldown),
                  DETAIL = ceil(extract(epoch FROM (last_at + p_cooldown - now())))::text;
    END IF;
    INSERT INTO service_restart_requests (target, requested_by, reason, status, started_at)
    VALUES (p_target, COALESCE(p_requested_by, current_user), p_reason,
            CASE WHEN p_claim THEN 'running' ELSE 'pending' END,
            CASE WHEN p_claim THEN now() END)
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

-- Wake the engine at once when a request row appears (it also polls, in case this is missed).
CREATE FUNCTION notify_service_restart() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'pending' THEN
        PERFORM pg_notify('fleetflow_restart_requests', NEW.id::text);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER service_restart_requests_notify AFTER INSERT ON service_restart_requests
    FOR EACH ROW EXECUTE FUNCTION notify_service_restart();
