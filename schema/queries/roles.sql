-- name: role_exists
SELECT 1 FROM pg_roles WHERE rolname = %(role)s;

-- name: create_role
-- {role} and {password} are composed as an identifier and a literal (psycopg.sql), never as text.
CREATE ROLE {role} LOGIN PASSWORD {password} NOSUPERUSER NOCREATEDB NOCREATEROLE;

-- name: set_role_password
ALTER ROLE {role} LOGIN PASSWORD {password};

-- name: grant_read_only
-- Read every table grpod has and will have; change nothing.
GRANT CONNECT ON DATABASE {database} TO {role};
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role};
