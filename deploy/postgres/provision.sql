-- The bank's Postgres roles and databases (issue 15), for the local stack
-- (scripts/lib/stack.sh) and compose (docker-entrypoint-initdb.d) alike: run
-- as the superuser by deploy/postgres/provision.sh. Each role's password is
-- read from psql's environment (PG_<ROLE>_PASSWORD), never from a command
-- line. Safe to run again (passwords are reset to the given ones).
--
-- Per database, a migration role owns the schema and runs the migrations
-- (`<service> migrate`); the services run as roles that own nothing and hold
-- only the grants their database's migrations give them. None may create
-- databases or roles, and none is a superuser, so none can set
-- session_replication_role, disable a trigger or read another's database.
\set ON_ERROR_STOP on
\getenv bank_auth_owner PG_BANK_AUTH_OWNER_PASSWORD
\getenv bank_auth PG_BANK_AUTH_PASSWORD
\getenv bank_command_owner PG_BANK_COMMAND_OWNER_PASSWORD
\getenv bank_command PG_BANK_COMMAND_PASSWORD
\getenv bank_read_owner PG_BANK_READ_OWNER_PASSWORD
\getenv bank_projector PG_BANK_PROJECTOR_PASSWORD
\getenv bank_query PG_BANK_QUERY_PASSWORD
\getenv bank_notify_owner PG_BANK_NOTIFY_OWNER_PASSWORD
\getenv bank_notify PG_BANK_NOTIFY_PASSWORD

SELECT format('CREATE ROLE %I', r)
FROM unnest(ARRAY['bank_auth_owner', 'bank_auth', 'bank_command_owner', 'bank_command',
                  'bank_read_owner', 'bank_projector', 'bank_query', 'bank_notify_owner', 'bank_notify']) AS r
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)
\gexec

ALTER ROLE bank_auth_owner    LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'bank_auth_owner';
ALTER ROLE bank_auth          LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'bank_auth';
ALTER ROLE bank_command_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'bank_command_owner';
ALTER ROLE bank_command       LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'bank_command';
ALTER ROLE bank_read_owner    LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'bank_read_owner';
ALTER ROLE bank_projector     LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'bank_projector';
ALTER ROLE bank_query         LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'bank_query';
ALTER ROLE bank_notify_owner  LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'bank_notify_owner';
ALTER ROLE bank_notify        LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'bank_notify';

SELECT format('CREATE DATABASE %I OWNER %I', d, o)
FROM (VALUES ('bank_auth', 'bank_auth_owner'), ('bank_command', 'bank_command_owner'),
             ('bank_read', 'bank_read_owner'), ('bank_notify', 'bank_notify_owner')) AS v(d, o)
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d)
\gexec

-- Until its migrations run, nobody but the owner reaches a database.
REVOKE ALL ON DATABASE bank_auth, bank_command, bank_read, bank_notify FROM PUBLIC;
