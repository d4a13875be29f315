-- The roles of least privilege, applied by `hocba-signer migrate` after every run (so a
-- table added by a later migration is granted here, in one place). Group roles, NOLOGIN:
-- an operator makes each service's login role a member (`hocba-signer db grant`).
--
--   hocba_daemon    the signing daemon: reads everything, writes what it stores; never
--                   UPDATE or DELETE on audit_log, audit_anchors, audit_verifications,
--                   signatures, record_versions, requests, submission_attempts; no DDL.
--   hocba_packager  the package runner and the `package*` commands: records, packages
--                   and their audit. The runner lives in the daemon's process, its
--                   connection pool and HSM pool, so hocba_daemon is also a member of
--                   hocba_packager: a role of its own would be a second credential in
--                   the same process, no isolation (README, "Who may change what").
--   hocba_verifier  `verify-server`: SELECT on what a verification reads, nothing else.
--
-- Roles belong to the cluster, grants to this database; several databases (a test run
-- each) share the roles. Creating them needs CREATEROLE; once they exist, it does not.
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['hocba_daemon', 'hocba_packager', 'hocba_verifier'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migrate created it just now
            END;
        END IF;
    END LOOP;
END;
$$;

-- No DDL for anyone but the owner (PostgreSQL before 15 lets PUBLIC create in public).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO hocba_daemon, hocba_packager, hocba_verifier;

-- Start from nothing, so a privilege removed here is removed there too.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM hocba_daemon, hocba_packager, hocba_verifier;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM hocba_daemon, hocba_packager, hocba_verifier;

-- hocba_daemon
GRANT SELECT ON ALL TABLES IN SCHEMA public TO hocba_daemon;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO hocba_daemon;
GRANT INSERT ON schools, signers, consent_keys, records, record_versions, signatures,
    requests, audit_log, audit_anchors, audit_verifications, outbox, rosters,
    roster_classes, live_records, certificate_status, ltv_horizons TO hocba_daemon;
GRANT UPDATE ON schools, signers, consent_keys, records, outbox, rosters, roster_classes,
    live_records, certificate_status, ltv_horizons TO hocba_daemon;
-- Queues and caches, not history: published events, stale status answers, old rosters.
GRANT DELETE ON outbox, rosters, roster_classes, certificate_status TO hocba_daemon;

-- hocba_packager (audit_log's chain trigger runs as the owner: no grant on audit_heads)
GRANT SELECT ON schools, signers, records, record_versions, signatures, packages,
    package_records, submission_attempts, outbox TO hocba_packager;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO hocba_packager;
GRANT INSERT ON packages, package_records, submission_attempts, audit_log, outbox
    TO hocba_packager;
GRANT UPDATE ON packages, package_records, records, outbox TO hocba_packager;
GRANT hocba_packager TO hocba_daemon;

-- hocba_verifier
-- signers: who a certificate belongs to, for the verdict (daemon/verification/lookup.py).
GRANT SELECT ON schools, signers, records, record_versions, signatures TO hocba_verifier;
