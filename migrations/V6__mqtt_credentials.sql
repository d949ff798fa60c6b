-- Hosted-broker credentials per organisation, and organisation-scoped API tokens.

CREATE TABLE mqtt_credentials (
    id                bigserial PRIMARY KEY,
    organization_id   bigint NOT NULL,
    username          text NOT NULL UNIQUE,
    -- argon2id PHC string; the password itself is never stored in clear.
    password_hash     text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    -- The password sealed with FLEETFLOW_SECRET_KEY (ChaCha20-Poly1305), only so that the
    -- reconcile loop can re-create a broker client that was deleted behind fleetflow's back.
    password_sealed   bytea NOT NULL,
    allowed_topics    text[] NOT NULL,
    description       text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    rotated_at        timestamptz,
    last_used_at      timestamptz,
    revoked_at        timestamptz,
    connections_total bigint NOT NULL DEFAULT 0,
    broker_synced_at  timestamptz
);
CREATE INDEX mqtt_credentials_org_idx ON mqtt_credentials (organization_id, created_at DESC);
CREATE TRIGGER mqtt_credentials_touch BEFORE UPDATE ON mqtt_credentials FOR EACH ROW EXECUTE FUNCTION fleetflow_touch_updated_at();

CREATE FUNCTION fleetflow_notify_mqtt_credentials() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleetflow_mqtt_credentials', COALESCE(NEW.username, OLD.username));
    RETURN NULL;
END $$;
CREATE TRIGGER mqtt_credentials_notify AFTER INSERT OR DELETE ON mqtt_credentials
    FOR EACH ROW EXECUTE FUNCTION fleetflow_notify_mqtt_credentials();
CREATE TRIGGER mqtt_credentials_notify_edit AFTER UPDATE ON mqtt_credentials FOR EACH ROW
    WHEN ((OLD.password_hash, OLD.allowed_topics, OLD.revoked_at) IS DISTINCT FROM (NEW.password_hash, NEW.allowed_topics, NEW.revoked_at))
    EXECUTE FUNCTION fleetflow_notify_mqtt_credentials();

CREATE TABLE organization_tokens (
    id               bigserial PRIMARY KEY,
    organization_id  bigint NOT NULL,
    name             text,
    -- SHA-256 of the token; the token is shown once when it is created.
    token_sha256     bytea NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_used_at     timestamptz,
    revoked_at       timestamptz
);

-- Tenants sharing these tables see only their organisation's rows (the engine's role owns the
-- tables and is not restricted).
ALTER TABLE mqtt_credentials ENABLE ROW LEVEL SECURITY;
CREATE POLICY mqtt_credentials_org_isolation ON mqtt_credentials
    USING (organization_id = NULLIF(current_setting('app.organization_id', true), '')::bigint);
ALTER TABLE organization_tokens ENABLE ROW LEVEL SECURITY;
CREATE POLICY organization_tokens_org_isolation ON organization_tokens
    USING (organization_id = NULLIF(current_setting('app.organization_id', true), '')::bigint);
