-- Messages kept as they arrived because they could not be processed when they came: the device
-- was quarantined or too busy (its mailbox and parking full), or the engine's device-actor
-- limit was reached. Written before the broker ack, so nothing acknowledged is lost; replayed
-- (republished on their topic, then deleted) by `fleetflow replay-dead-letters`.
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    device_id   text        NOT NULL,
    topic       text        NOT NULL,
    payload     bytea       NOT NULL,
    reason      text        NOT NULL,
    source      text        NOT NULL,
    received_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_device_idx ON dead_letters (device_id, id);
