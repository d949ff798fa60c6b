-- The MQTT protocol version each product's source speaks: '5' (the default) or '3.1.1', for
-- brokers that speak nothing newer. Existing rows keep MQTT 5.
ALTER TABLE mqtt_configs
    ADD COLUMN protocol_version text NOT NULL DEFAULT '5'
        CHECK (protocol_version IN ('5', '3.1.1'));
