-- name: database_exists
-- Whether the embedded server already has grpod's database.
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'grpod');

-- name: create_database
-- grpod's own database on the embedded server (its name is fixed: 'grpod').
CREATE DATABASE grpod;
