-- The restart rate limit becomes "at most p_max requests per target per window" (default 1 per
-- 5 minutes, as before). Every request counts except 'rejected' ones (never run): a pipeline or
-- source restart that ends 'failed' has still drained and rebuilt things.
DROP FUNCTION request_service_restart(text, text, text, interval, boolean);

CREATE FUNCTION request_service_restart(
    p_target text,
    p_reason text DEFAULT NULL,
    p_requested_by text DEFAULT NULL,
    p_cooldown interval DEFAULT interval '5 minutes',
    p_claim boolean DEFAULT false,
    p_max integer DEFAULT 1
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    recent integer;
    oldest timestamptz;
    new_id bigint;
BEGIN
    IF p_target IS NULL OR p_target !~ '^(device:[^:/+#[:space:]]{1,64}|source:[A-Za-z0-9._-]{1,64}|sink:(postgres|objects)|pipeline)$' THEN
        RAISE EXCEPTION 'invalid restart target %', p_target
            USING ERRCODE = '22023', HINT = 'use device:<id>, source:<product_id>, sink:postgres, sink:objects or pipeline';
    END IF;
    IF p_max IS NULL OR p_max < 1 THEN
        RAISE EXCEPTION 'p_max must be at least 1' USING ERRCODE = '22023';
    END IF;
    -- Serialise requests for one target so the check cannot race.
    PERFORM pg_advisory_xact_lock(hashtext('fleetflow-restart:' || p_target));
    SELECT count(*), min(requested_at) INTO recent, oldest FROM (
        SELECT requested_at FROM service_restart_requests
         WHERE target = p_target AND status <> 'rejected'
           AND requested_at > now() - p_cooldown
         ORDER BY requested_at DESC LIMIT p_max) r;
    IF recent >= p_max THEN
        RAISE EXCEPTION 'restart of % was already requested % time(s) since %; the cooldown allows % per %', p_target, recent, oldest, p_max, p_cooldown
            USING ERRCODE = 'P0001', HINT = format('retry after %s', oldest + p_cooldown),
                  DETAIL = ceil(extract(epoch FROM (oldest + p_cooldown - now())))::text;
    END IF;
    INSERT INTO service_restart_requests (target, requested_by, reason, status, started_at)
    VALUES (p_target, COALESCE(p_requested_by, current_user), p_reason,
            CASE WHEN p_claim THEN 'running' ELSE 'pending' END,
            CASE WHEN p_claim THEN now() END)
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;
