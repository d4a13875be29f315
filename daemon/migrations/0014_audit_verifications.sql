-- The daemon's scheduled walks of the audit trail (daemon/audit/anchors.py), one row a
-- walk, whichever instance made it. Before, each instance kept the time of its own last
-- walk in memory: every instance walked the whole trail when it started, and read every
-- stored document again (all of them, the first time), so a rolling restart of three
-- instances during the end-of-May peak read a district's store three times, each inside
-- one long transaction. Now the schedule is the cluster's (the next walk is due
-- `audit.verify_every_s` after the last one here) and a walk reads the documents of
-- versions stored since the last walk that found the trail whole: a walk that found a
-- break does not move that mark, so the next one looks at the same documents again.
-- Every instance reports the newest row in hocba_audit_last_verification_ok and
-- hocba_audit_verification_timestamp_seconds, so a restart neither clears nor hides it.
CREATE TABLE audit_verifications (
    id               bigserial PRIMARY KEY,
    -- The walk's start by the instance's clock (the schedule's) and by the database's
    -- (the documents' mark: record_versions.created_at is the database's time).
    started_at       timestamptz NOT NULL,
    database_started_at timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    ok               boolean NOT NULL,
    chains           integer NOT NULL,
    entries          bigint NOT NULL,
    breaks           integer NOT NULL,
    -- The documents read: those of versions stored since documents_since (NULL: all).
    documents        bigint NOT NULL,
    documents_since  timestamptz,
    instance         text NOT NULL
);
CREATE INDEX audit_verifications_started ON audit_verifications (started_at);
CREATE TRIGGER audit_verifications_no_update BEFORE UPDATE OR DELETE ON audit_verifications
    FOR EACH ROW EXECUTE FUNCTION history_append_only();
