-- Row-level security for a database that holds many clinics' vaults, each clinic connecting
-- as a PostgreSQL role of its own (docs/postgresql-hosting.md). Run as a superuser (or the
-- owner of Carnet's tables with CREATEROLE), in the database, once the owner made the tables
-- (`carnet init --tables-only`), and again after each upgrade of Carnet that changes them.
-- A clinic's role then reads and writes the one vault named as the role (vault=ROLE in its
-- URI), and no row of any other vault, whatever it sends. It can still learn other vaults'
-- sizes and activity, and make them wait: read "Limits" in docs/postgresql-hosting.md.

ALTER TABLE carnet_vaults ENABLE ROW LEVEL SECURITY;
ALTER TABLE carnet_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE carnet_documents ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS carnet_own_vault ON carnet_vaults;
CREATE POLICY carnet_own_vault ON carnet_vaults
    USING (name = current_user AND current_user <> 'carnet_clinics')
    WITH CHECK (name = current_user AND current_user <> 'carnet_clinics');

DROP POLICY IF EXISTS carnet_own_rows ON carnet_records;
CREATE POLICY carnet_own_rows ON carnet_records
    USING (vault IN (SELECT id FROM carnet_vaults WHERE name = current_user))
    WITH CHECK (vault IN (SELECT id FROM carnet_vaults WHERE name = current_user));
-- (The group role itself, reached by SET ROLE, owns no vault: see carnet_own_vault.)

DROP POLICY IF EXISTS carnet_own_rows ON carnet_documents;
CREATE POLICY carnet_own_rows ON carnet_documents
    USING (vault IN (SELECT id FROM carnet_vaults WHERE name = current_user))
    WITH CHECK (vault IN (SELECT id FROM carnet_vaults WHERE name = current_user));
-- (The group role itself, reached by SET ROLE, owns no vault: see carnet_own_vault.)

-- The clinics' roles are members of this one; it may use the tables, never change them.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'carnet_clinics') THEN
        CREATE ROLE carnet_clinics NOLOGIN;
    END IF;
END $$;
REVOKE ALL ON carnet_schema, carnet_vaults, carnet_records, carnet_documents FROM PUBLIC;
GRANT SELECT ON carnet_schema TO carnet_clinics;
GRANT SELECT, INSERT ON carnet_vaults TO carnet_clinics;
GRANT USAGE ON SEQUENCE carnet_vaults_id_seq TO carnet_clinics;
GRANT SELECT, INSERT, UPDATE, DELETE ON carnet_records, carnet_documents TO carnet_clinics;
-- Erasures and rotations stage a space's new records in a temporary table.
DO $$ BEGIN
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO carnet_clinics', current_database());
END $$;
-- PostgreSQL 15 makes the public schema so; a cluster upgraded from an older one may not: no
-- clinic may plant a function or an operator there for another's statements to pick up.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
