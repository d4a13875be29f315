-- One connection's store statement grew slower the more records it had stored (README,
-- the audit trail's "Cost"): 0.2 -> 0.6 ms of backend CPU for a plain INSERT into
-- records over 5,000 on one connection, the whole store statement more.
--
-- auto_explain showed the cause: the look-up `school_id = $1 AND record_id = $2` (the
-- foreign-key check of live_records -> records that the records_one_live_per_student
-- trigger of 0008 causes, like every other check against records and the daemon's own
-- look-ups of one record) scanned records_progress with `school_id` as its only index
-- condition, and filtered out the school's other records one by one ("Rows Removed by
-- Filter: 2000"), not the primary key. While records holds fewer than ~1,000 rows and
-- has no statistics, the planner expects a school to have less than one record
-- (the default 0.5% for an equality), so an index on (school_id, ...) costs exactly
-- what the primary key costs and wins the tie. The check's plan is cached by the
-- backend (a generic plan after five runs) and made again only when records is
-- invalidated, e.g. by ANALYZE; with autovacuum off, or before its first analyze of a
-- new table, a pooled connection opened on a small table keeps that plan for hours.
--
-- The same index with `school_id` after the round's columns: every query that used
-- it names year and round as well (the packager's records of a round, the schools
-- waiting in a round, the gauges' two latest years), and a look-up by school alone
-- has the primary key; the look-up of one record now has no other index whose leading
-- column it can use, so its plan is the primary key's whatever the statistics say.
-- Integrity is unchanged (no constraint is touched). The build blocks writes to
-- records while it runs (seconds for a district's records), as a migration may.
CREATE INDEX records_progress_by_round
    ON records (academic_year, submission_round, school_id, state);
DROP INDEX records_progress;
