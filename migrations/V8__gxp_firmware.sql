-- The GXP firmware already in the field (GXP-FIRMWARE.md): free-text status, each device's and
-- capture's wire format, GXP metadata kept with its capture, wake schedules, and device commands
-- inserted as rows by other tools (the old dashboard's columns) picked up through NOTIFY.

-- Status is free text as the firmware sends it ("Alive", ...).
ALTER TABLE device_status DROP CONSTRAINT IF EXISTS device_status_status_check;
ALTER TABLE device_status ADD CONSTRAINT device_status_status_len CHECK (char_length(status) BETWEEN 1 AND 64);

-- The format a device speaks (answers and commands follow it): 'v1' (PROTOCOL.md) or 'gxp'.
ALTER TABLE devices ADD COLUMN wire_format text CHECK (wire_format IN ('v1', 'gxp'));
ALTER TABLE captures ADD COLUMN wire_format text NOT NULL DEFAULT 'v1' CHECK (wire_format IN ('v1', 'gxp'));
-- GXP metadata fields without a column of their own (location, image_id, error, unknown fields).
ALTER TABLE captures ADD COLUMN meta jsonb;

-- Wake schedules: captures per day (default 2), fixed local wake times, or a test mode of every N
-- minutes; and the next wake the engine recorded for the device.
CREATE TABLE device_schedules (
    device_id         text PRIMARY KEY,
    company_id        bigint,
    mode              text CHECK (mode IN ('per_day', 'fixed', 'every_minutes')),
    captures_per_day  integer CHECK (captures_per_day BETWEEN 1 AND 1440),
    wake_times        text[],
    every_minutes     integer CHECK (every_minutes BETWEEN 1 AND 1440),
    timezone          text NOT NULL DEFAULT 'UTC',
    next_wake_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE device_schedules ENABLE ROW LEVEL SECURITY;
CREATE POLICY device_schedules_company_isolation ON device_schedules
    USING (company_id = NULLIF(current_setting('app.company_id', true), '')::bigint);

CREATE FUNCTION notify_device_schedule() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only edits of the schedule itself; the engine's own next-wake writes are not news.
    IF TG_OP = 'INSERT' AND NEW.mode IS NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.mode IS NOT DISTINCT FROM OLD.mode
       AND NEW.captures_per_day IS NOT DISTINCT FROM OLD.captures_per_day
       AND NEW.wake_times IS NOT DISTINCT FROM OLD.wake_times
       AND NEW.every_minutes IS NOT DISTINCT FROM OLD.every_minutes
       AND NEW.timezone IS NOT DISTINCT FROM OLD.timezone THEN
        RETURN NEW;
    END IF;
    PERFORM pg_notify('fleetflow_device_schedules', NEW.device_id);
    RETURN NEW;
END $$;
CREATE TRIGGER device_schedules_notify AFTER INSERT OR UPDATE ON device_schedules
    FOR EACH ROW EXECUTE FUNCTION notify_device_schedule();

-- Commands as rows: the old dashboard inserted (device_id, command_type, command_payload,
-- status = 'queued'). Both spellings are kept in step, `id` gets a default, and every queued row
-- wakes the engine's command dispatcher.
ALTER TABLE device_commands ALTER COLUMN id SET DEFAULT ('c-' || replace(gen_random_uuid()::text, '-', ''));
ALTER TABLE device_commands ADD COLUMN command_type text;
ALTER TABLE device_commands ADD COLUMN command_payload jsonb;
ALTER TABLE device_commands ADD COLUMN requested_at timestamptz;
ALTER TABLE device_commands ADD COLUMN command_id text GENERATED ALWAYS AS (id) STORED;
ALTER TABLE device_commands ADD COLUMN wire_format text CHECK (wire_format IN ('v1', 'gxp'));
ALTER TABLE device_commands ADD COLUMN error text;

CREATE FUNCTION device_commands_compat() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.name := COALESCE(NEW.name, NEW.command_type);
    IF NEW.command_payload IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.command_payload IS DISTINCT FROM OLD.command_payload) THEN
        NEW.args := NEW.command_payload;
    END IF;
    NEW.command_type := NEW.name;
    NEW.command_payload := NEW.args;
    NEW.requested_at := COALESCE(NEW.requested_at, NEW.created_at);
    RETURN NEW;
END $$;
CREATE TRIGGER device_commands_compat BEFORE INSERT OR UPDATE ON device_commands
    FOR EACH ROW EXECUTE FUNCTION device_commands_compat();

CREATE FUNCTION notify_device_command() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'queued' THEN
        PERFORM pg_notify('fleetflow_device_commands', NEW.id);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER device_commands_notify AFTER INSERT OR UPDATE OF status ON device_commands
    FOR EACH ROW EXECUTE FUNCTION notify_device_command();

CREATE INDEX device_commands_queued_idx ON device_commands (created_at) WHERE status = 'queued';

-- Per-product settings of the GXP profile (firmware generations differ): nack_topic,
-- next_wake_format, gas_unit, resend_whole_image_after_retries, nack_max_bytes.
ALTER TABLE mqtt_configs ADD COLUMN gxp jsonb;
