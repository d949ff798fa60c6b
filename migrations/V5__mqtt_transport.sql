-- TLS and websocket settings of database-configured sources.
ALTER TABLE mqtt_configs
    ADD COLUMN ca_cert_pem text,
    ADD COLUMN ws_path text NOT NULL DEFAULT '/mqtt';
