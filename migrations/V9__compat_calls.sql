-- Compatibility with the systems fleetflow replaces (docs/migrating-from-the-gxp-worker.md,
-- "The old systems' calls"):
--
-- 1. `service_restart_requests.service_name`, kept in step with `target` by a trigger:
--    `pipeline` reads as the old service name `mqtt-subscriber`, every other target as itself
--    (and a row inserted with only `service_name` gets its target), so the old troubleshooting
--      UPDATE service_restart_requests SET status = 'completed'
--       WHERE status = 'pending' AND service_name = 'mqtt-subscriber';
--    runs as written.
-- 2. That UPDATE does what its text says: it closes the pending request by hand. A row closed
--    without ever running (no `started_at`) is stamped `completed_at` and `result.closed_by_hand`,
--    and does not count toward the cooldown, so a new request can be made at once.
-- 3. `request_service_restart(p_service_name => 'mqtt-subscriber')`, the old RPC, works: the
--    old service names (`mqtt-subscriber`, `mqtt`, `all`) mean `pipeline`; a target text is
--    accepted too. Positional calls keep working (`p_service_name` is the last parameter).

-- The target an old service name stands for (NULL when it names none).
CREATE FUNCTION restart_target_for_service(p_service_name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN lower(p_service_name) IN ('mqtt-subscriber', 'mqtt', 'all', 'fleetflow') THEN 'pipeline'
        WHEN p_service_name ~ '^(device:[^:/+#[:space:]]{1,64}|source:[A-Za-z0-9._-]{1,64}|sink:(postgres|objects)|pipeline)$' THEN p_service_name
    END
$$;

ALTER TABLE service_restart_requests ADD COLUMN service_name text;
UPDATE service_restart_requests
   SET service_name = CASE WHEN target = 'pipeline' THEN 'mqtt-subscriber' ELSE target END;
CREATE INDEX service_restart_requests_service_pending_idx
    ON service_restart_requests (service_name) WHERE status = 'pending';

-- Keeps `service_name` in step with `target`, both ways on insert: a row inserted the old way,
-- with only `service_name`, gets its target (an unknown name is refused, naming the ones known).
CREATE FUNCTION restart_request_service_name() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND NEW.target IS NULL THEN
        NEW.target := restart_target_for_service(NEW.service_name);
        IF NEW.target IS NULL THEN
            RAISE EXCEPTION 'unknown service %', NEW.service_name
                USING ERRCODE = '22023', HINT = 'use mqtt-subscriber (the whole pipeline), or a target: device:<id>, source:<product_id>, sink:postgres, sink:objects, pipeline';
        END IF;
    END IF;
    NEW.service_name := CASE WHEN NEW.target = 'pipeline' THEN 'mqtt-subscriber' ELSE NEW.target END;
    RETURN NEW;
END $$;
CREATE TRIGGER service_restart_requests_service_name
    BEFORE INSERT OR UPDATE ON service_restart_requests
    FOR EACH ROW EXECUTE FUNCTION restart_request_service_name();

-- A pending row closed by hand (completed or failed without having run) is stamped, so the
-- audit trail says what happened, and so the cooldown can leave it out.
CREATE FUNCTION close_restart_request_by_hand() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'pending' AND NEW.status IN ('completed', 'failed') AND NEW.started_at IS NULL THEN
        NEW.completed_at := COALESCE(NEW.completed_at, now());
        NEW.result := COALESCE(NEW.result, '{}'::jsonb) || jsonb_build_object('closed_by_hand', true, 'by', current_user);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER service_restart_requests_closed_by_hand
    BEFORE UPDATE OF status ON service_restart_requests
    FOR EACH ROW EXECUTE FUNCTION close_restart_request_by_hand();

DROP FUNCTION request_service_restart(text, text, text, interval, boolean, integer);

CREATE FUNCTION request_service_restart(
    p_target text DEFAULT NULL,
    p_reason text DEFAULT NULL,
    p_requested_by text DEFAULT NULL,
    p_cooldown interval DEFAULT interval '5 minutes',
    p_claim boolean DEFAULT false,
    p_max integer DEFAULT 1,
    p_service_name text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_target text := p_target;
    recent integer;
    oldest timestamptz;
    new_id bigint;
BEGIN
    IF v_target IS NULL AND p_service_name IS NOT NULL THEN
        v_target := restart_target_for_service(p_service_name);
        IF v_target IS NULL THEN
            RAISE EXCEPTION 'unknown service %', p_service_name
                USING ERRCODE = '22023', HINT = 'use mqtt-subscriber (the whole pipeline), or a target: device:<id>, source:<product_id>, sink:postgres, sink:objects, pipeline';
        END IF;
    END IF;
    IF v_target IS NULL OR v_target !~ '^(device:[^:/+#[:space:]]{1,64}|source:[A-Za-z0-9._-]{1,64}|sink:(postgres|objects)|pipeline)$' THEN
        RAISE EXCEPTION 'invalid restart target %', v_target
            USING ERRCODE = '22023', HINT = 'use device:<id>, source:<product_id>, sink:postgres, sink:objects or pipeline';
    END IF;
    IF p_max IS NULL OR p_max < 1 THEN
        RAISE EXCEPTION 'p_max must be at least 1' USING ERRCODE = '22023';
    END IF;
    -- Serialise requests for one target so the check cannot race.
    PERFORM pg_advisory_xact_lock(hashtext('fleetflow-restart:' || v_target));
    SELECT count(*), min(requested_at) INTO recent, oldest FROM (
        SELECT requested_at FROM service_restart_requests
         WHERE target = v_target AND status <> 'rejected'
           AND NOT (status IN ('completed', 'failed') AND started_at IS NULL)
           AND requested_at > now() - p_cooldown
         ORDER BY requested_at DESC LIMIT p_max) r;
    IF recent >= p_max THEN
        RAISE EXCEPTION 'restart of % was already requested % time(s) since %; the cooldown allows % per %', v_target, recent, oldest, p_max, p_cooldown
            USING ERRCODE = 'P0001', HINT = format('retry after %s', oldest + p_cooldown),
                  DETAIL = ceil(extract(epoch FROM (oldest + p_cooldown - now())))::text;
    END IF;
    INSERT INTO service_restart_requests (target, requested_by, reason, status, started_at)
    VALUES (v_target, COALESCE(p_requested_by, current_user), p_reason,
            CASE WHEN p_claim THEN 'running' ELSE 'pending' END,
            CASE WHEN p_claim THEN now() END)
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;
