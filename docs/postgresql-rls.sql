-- Row-level security for a database that holds many clinics' vaults, each clinic connecting
-- as a PostgreSQL role of its own (docs/postgresql-hosting.md). Run once, as the role that
-- owns Carnet's tables (it made them with `carnet init --tables-only`), after each upgrade of
-- Carnet that changes its tables. A clinic's role then reaches the one vault named as the role
-- (vault=ROLE in its URI), and no row of any other vault, whatever it sends.

ALTER TABLE carnet_vaults ENABLE ROW LEVEL SECURITY;
ALTER TABLE carnet_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE carnet_documents ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS carnet_own_vault ON carnet_vaults;
CREATE POLICY carnet_own_vault ON carnet_vaults
    USING (name = current_user) WITH CHECK (name = current_user);

DROP POLICY IF EXISTS carnet_own_rows ON carnet_records;
CREATE POLICY carnet_own_rows ON carnet_records
    USING (vault IN (SELECT id FROM carnet_vaults WHERE name = current_user))
    WITH CHECK (vault IN (SELECT id FROM carnet_vaults WHERE name = current_user));

DROP POLICY IF EXISTS carnet_own_rows ON carnet_documents;
CREATE POLICY carnet_own_rows ON carnet_documents
    USING (vault IN (SELECT id FROM carnet_vaults WHERE name = current_user))
    WITH CHECK (vault IN (SELECT id FROM carnet_vaults WHERE name = current_user));

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
