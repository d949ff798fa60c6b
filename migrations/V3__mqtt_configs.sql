-- Control plane: broker and subscription config per product, and live connection status.

CREATE TABLE mqtt_configs (
    id                  bigserial PRIMARY KEY,
    product_id          text NOT NULL UNIQUE,
    host                text NOT NULL,
    port                integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    protocol            text NOT NULL DEFAULT 'mqtt' CHECK (protocol IN ('mqtt', 'mqtts', 'ws', 'wss')),
    use_tls             boolean NOT NULL DEFAULT false,
    verify_cert         boolean NOT NULL DEFAULT true,
    username            text,
    password_encrypted  bytea,
    client_id           text NOT NULL,
    keep_alive_secs     integer NOT NULL DEFAULT 30,
    clean_session       boolean NOT NULL DEFAULT false,
    prefix              text NOT NULL DEFAULT 'ESP32CAM',
    pattern             text,
    use_shared          boolean NOT NULL DEFAULT false,
    shared_group        text,
    qos                 smallint NOT NULL DEFAULT 1 CHECK (qos BETWEEN 0 AND 2),
    enabled             boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mqtt_subscriptions (
    id                bigserial PRIMARY KEY,
    mqtt_config_id    bigint NOT NULL REFERENCES mqtt_configs (id) ON DELETE CASCADE,
    name              text NOT NULL,
    topic             text NOT NULL,
    enabled           boolean NOT NULL DEFAULT true,
    description       text,
    actions           jsonb NOT NULL DEFAULT '[]'::jsonb,
    messages_received bigint NOT NULL DEFAULT 0,
    actions_executed  bigint NOT NULL DEFAULT 0,
    actions_failed    bigint NOT NULL DEFAULT 0,
    last_message_at   timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (mqtt_config_id, name)
);

CREATE TABLE mqtt_connection_status (
    product_id               text PRIMARY KEY,
    connected                boolean NOT NULL DEFAULT false,
    last_connected_at        timestamptz,
    last_disconnected_at     timestamptz,
    messages_received        bigint NOT NULL DEFAULT 0,
    subscribed_topics_count  integer NOT NULL DEFAULT 0,
    client_id                text,
    broker_info              jsonb,
    connection_error         text,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION fleetflow_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END $$;

-- Announces config changes (through the API or by hand) to running engines.
CREATE FUNCTION fleetflow_notify_mqtt_config() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE cfg_id bigint;
BEGIN
    IF TG_TABLE_NAME = 'mqtt_configs' THEN
        cfg_id := COALESCE(NEW.id, OLD.id);
    ELSE
        cfg_id := COALESCE(NEW.mqtt_config_id, OLD.mqtt_config_id);
    END IF;
    PERFORM pg_notify('fleetflow_mqtt_config', cfg_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER mqtt_configs_touch BEFORE UPDATE ON mqtt_configs FOR EACH ROW EXECUTE FUNCTION fleetflow_touch_updated_at();
CREATE TRIGGER mqtt_subscriptions_touch BEFORE UPDATE ON mqtt_subscriptions FOR EACH ROW EXECUTE FUNCTION fleetflow_touch_updated_at();
CREATE TRIGGER mqtt_connection_status_touch BEFORE UPDATE ON mqtt_connection_status FOR EACH ROW EXECUTE FUNCTION fleetflow_touch_updated_at();
CREATE TRIGGER mqtt_configs_notify AFTER INSERT OR UPDATE OR DELETE ON mqtt_configs FOR EACH ROW EXECUTE FUNCTION fleetflow_notify_mqtt_config();
CREATE TRIGGER mqtt_subscriptions_notify AFTER INSERT OR DELETE ON mqtt_subscriptions FOR EACH ROW EXECUTE FUNCTION fleetflow_notify_mqtt_config();
-- Statistics are written back once a second: only real edits announce a change.
CREATE TRIGGER mqtt_subscriptions_notify_edit AFTER UPDATE ON mqtt_subscriptions FOR EACH ROW
    WHEN ((OLD.name, OLD.topic, OLD.enabled, OLD.actions) IS DISTINCT FROM (NEW.name, NEW.topic, NEW.enabled, NEW.actions))
    EXECUTE FUNCTION fleetflow_notify_mqtt_config();
