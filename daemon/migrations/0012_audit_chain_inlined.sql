-- The audit chain's cost (issue 16): the same chain, the same canonical form, cheaper.
--
-- Profiled (single INSERTs into audit_log, each its own transaction, trigger variants
-- alternated in one run): of the ~0.25 ms the 0010 trigger added per entry, ~0.15 ms
-- was audit_entry_hash being run as a separate SQL function. It was declared IMMUTABLE
-- but calls STABLE functions (to_char, convert_to), so the planner never inlined it
-- into the trigger's UPDATE: every entry paid for the SQL function executor, which
-- before PostgreSQL 18 parses and plans the body (and its nine audit_field calls)
-- again in every transaction. The hash itself (sha256 of ~400 bytes, to_char, jsonb's
-- text) costs a few microseconds; the head's UPDATE (a HOT update of one small row)
-- ~50 µs; the (chain, seq) index ~10 µs, within the noise, and kept (it orders and
-- guards the chains, and `audit verify` walks by it).
--
-- STABLE is what the body is (its result depends on nothing but its arguments within
-- a statement; to_char's pattern has no locale-dependent part): the planner now
-- expands it in the trigger's cached plan. The canonical form ("hocba-audit-v1", see
-- 0010) does not change, so entries written before and after this migration verify
-- alike, and daemon/audit/chain.py still recomputes exactly these bytes.
ALTER FUNCTION audit_entry_hash(text, bigint, text, timestamptz, text, text, uuid, text, jsonb)
    STABLE;

-- One row per school, updated in place by every entry: leave room on its page so the
-- new version stays there (a HOT update, no index entry) for longer while a long
-- transaction (a backup, an `audit verify` walk) keeps old versions from being pruned.
-- Applies to pages written from now on; the table is small.
ALTER TABLE audit_heads SET (fillfactor = 50);
