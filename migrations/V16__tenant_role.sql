-- The role organisation-token requests run under (`SET LOCAL ROLE fleetflow_tenant` with
-- `app.organization_id` set), so that row-level security, not only the query, keeps one
-- organisation out of another's rows. It cannot log in and does not bypass RLS; the engine's
-- own role owns the tables (owners are not subject to RLS) and is granted this role so that it
-- can switch to it. Roles are cluster-wide: creating it is skipped when it exists (another
-- database of the cluster made it).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fleetflow_tenant') THEN
        CREATE ROLE fleetflow_tenant NOLOGIN NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- created concurrently by a migration of another database
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT fleetflow_tenant TO %I', current_user);
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;
    WHEN insufficient_privilege THEN
        -- The role exists and this user may not grant it (PostgreSQL 16 wants ADMIN OPTION):
        -- an administrator runs `GRANT fleetflow_tenant TO <engine role>`.
        RAISE WARNING 'cannot grant fleetflow_tenant to %: organisation requests will fail until an administrator does', current_user;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON mqtt_credentials, organization_tokens TO fleetflow_tenant;
GRANT USAGE, SELECT ON SEQUENCE mqtt_credentials_id_seq, organization_tokens_id_seq TO fleetflow_tenant;
-- Device data, isolated by `app.company_id` (V1, V4, V8).
GRANT SELECT ON devices, device_status, sensor_readings, captures, device_errors, telemetry, device_schedules TO fleetflow_tenant;
