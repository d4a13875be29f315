-- A tamper-evident audit trail (daemon/audit/): every audit_log entry carries its place
-- in its school's chain (`chain` = school_id, '' for entries of no school), the hash of
-- the entry before it and its own hash, so that changing, removing or reordering an
-- entry breaks the chain from there on; audit_anchors keeps the chains' heads with an
-- RFC 3161 timestamp over them, so that even a rewrite of a whole chain is caught.
--
-- The hash is computed here, by a trigger, and not by the writers: every writer
-- (signatures, refusals, registry, packages, renewals; old instances during an upgrade)
-- chains alike, the one statement that stores a signature stays one round trip, and the
-- writer's role cannot choose a hash. The trigger runs as the schema owner (SECURITY
-- DEFINER), so the daemon's role needs no privilege on audit_heads at all.
--
-- The entry's canonical form (daemon/audit/chain.py recomputes it, independently):
--   "hocba-audit-v1\n" then, for chain, seq, prev_hash, at (UTC, microseconds),
--   school_id, record_id, request_id, action, detail (jsonb's own text): the field's
--   UTF-8 length, ':', the field, '\n'; a NULL field is "~\n". hash = sha256 of it, hex.

ALTER TABLE audit_log ADD COLUMN chain text;
ALTER TABLE audit_log ADD COLUMN seq bigint;
ALTER TABLE audit_log ADD COLUMN prev_hash text;
ALTER TABLE audit_log ADD COLUMN hash text;

-- The newest entry of each chain. Its row lock (taken by the trigger, held to commit)
-- orders one school's entries; schools never wait for each other.
CREATE TABLE audit_heads (
    chain       text PRIMARY KEY,
    seq         bigint NOT NULL CHECK (seq >= 0),
    prev_hash   text NOT NULL,
    hash        text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION audit_field(value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL THEN '~' ELSE octet_length(value)::text || ':' || value END
           || E'\n'
$$;

CREATE FUNCTION audit_entry_hash(
    chain text, seq bigint, prev_hash text, at timestamptz, school_id text, record_id text,
    request_id uuid, action text, detail jsonb
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT encode(sha256(convert_to(
        E'hocba-audit-v1\n'
        || audit_field(chain) || audit_field(seq::text) || audit_field(prev_hash)
        || audit_field(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
        || audit_field(school_id) || audit_field(record_id) || audit_field(request_id::text)
        || audit_field(action) || audit_field(detail::text),
        'UTF8')), 'hex')
$$;

-- Entries written before this migration: chained now, in the order they were written.
ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update;
DO $$
DECLARE
    entry record;
    head_seq bigint;
    head_hash text;
BEGIN
    FOR entry IN SELECT * FROM audit_log ORDER BY id LOOP
        SELECT h.seq, h.hash INTO head_seq, head_hash
        FROM audit_heads h WHERE h.chain = coalesce(entry.school_id, '');
        IF NOT FOUND THEN
            head_seq := 0;
            head_hash := repeat('0', 64);
            INSERT INTO audit_heads (chain, seq, prev_hash, hash)
            VALUES (coalesce(entry.school_id, ''), 0, head_hash, head_hash);
        END IF;
        UPDATE audit_log SET chain = coalesce(entry.school_id, ''), seq = head_seq + 1,
               prev_hash = head_hash,
               hash = audit_entry_hash(coalesce(entry.school_id, ''), head_seq + 1, head_hash,
                                       entry.at, entry.school_id, entry.record_id,
                                       entry.request_id, entry.action, entry.detail)
        WHERE id = entry.id
        RETURNING hash INTO head_hash;
        UPDATE audit_heads SET seq = head_seq + 1, prev_hash = hash, hash = head_hash
        WHERE chain = coalesce(entry.school_id, '');
    END LOOP;
END;
$$;
ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update;

ALTER TABLE audit_log ALTER COLUMN chain SET NOT NULL;
ALTER TABLE audit_log ALTER COLUMN seq SET NOT NULL;
ALTER TABLE audit_log ALTER COLUMN prev_hash SET NOT NULL;
ALTER TABLE audit_log ALTER COLUMN hash SET NOT NULL;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_chain_seq UNIQUE (chain, seq);

CREATE FUNCTION audit_log_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    NEW.chain := coalesce(NEW.school_id, '');
    LOOP
        -- One statement: advance the head (its row lock, held until commit, makes the
        -- next entry of this school wait here), hashing after the head's previous hash.
        UPDATE audit_heads
        SET seq = seq + 1, prev_hash = hash, updated_at = now(),
            hash = audit_entry_hash(NEW.chain, seq + 1, hash, NEW.at, NEW.school_id,
                                    NEW.record_id, NEW.request_id, NEW.action, NEW.detail)
        WHERE chain = NEW.chain
        RETURNING seq, prev_hash, hash INTO NEW.seq, NEW.prev_hash, NEW.hash;
        EXIT WHEN FOUND;
        INSERT INTO audit_heads (chain, seq, prev_hash, hash)
        VALUES (NEW.chain, 1, repeat('0', 64),
                audit_entry_hash(NEW.chain, 1, repeat('0', 64), NEW.at, NEW.school_id,
                                 NEW.record_id, NEW.request_id, NEW.action, NEW.detail))
        ON CONFLICT (chain) DO NOTHING
        RETURNING seq, prev_hash, hash INTO NEW.seq, NEW.prev_hash, NEW.hash;
        EXIT WHEN FOUND;
    END LOOP;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_chain();

-- The chains' heads, timestamped by the TSA (daemon/audit/anchors.py). `heads` is
-- [{"chain", "seq", "hash"}, ...] by chain; `heads_sha256` the sha256 of their canonical
-- form ("hocba-anchor-v1\n", then chain, seq, hash of each as above), which is the
-- token's message imprint.
CREATE TABLE audit_anchors (
    id            bigserial PRIMARY KEY,
    anchored_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason        text NOT NULL CHECK (reason IN ('scheduled', 'deadline', 'manual')),
    heads         jsonb NOT NULL,
    heads_sha256  text NOT NULL,
    token         bytea NOT NULL
);

-- History never changes: the roles (roles.sql) grant no UPDATE or DELETE on it, and
-- these triggers refuse it even to a role that has the privilege by mistake.
CREATE FUNCTION history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_anchors_no_update BEFORE UPDATE OR DELETE ON audit_anchors
    FOR EACH ROW EXECUTE FUNCTION history_append_only();
CREATE TRIGGER signatures_no_update BEFORE UPDATE OR DELETE ON signatures
    FOR EACH ROW EXECUTE FUNCTION history_append_only();
CREATE TRIGGER record_versions_no_update BEFORE UPDATE OR DELETE ON record_versions
    FOR EACH ROW EXECUTE FUNCTION history_append_only();
CREATE TRIGGER requests_no_update BEFORE UPDATE OR DELETE ON requests
    FOR EACH ROW EXECUTE FUNCTION history_append_only();
