-- The district's registry without SQL by hand, and rosters.
--
-- consent_keys: every consent key a school has had. The current one stays in
-- schools.consent_alg / consent_key (what every instance reads); a rotated-out key keeps
-- its row with valid_until = the end of its grace period, until when a consent signed
-- with it is still accepted.
-- rosters, roster_classes: the latest roster per (school, year, round) — what the school
-- must sign, and who is the homeroom teacher of each class.
-- live_records: one live record per (school, student, year, round), kept by a trigger on
-- records, so that two instances creating records for one student at once cannot both
-- commit: the second fails on this table's key, is retried, and is refused then as
-- `duplicate_record`.

CREATE TABLE consent_keys (
    school_id    text NOT NULL REFERENCES schools (school_id),
    key_id       integer NOT NULL CHECK (key_id >= 1),
    alg          text NOT NULL CHECK (alg IN ('EdDSA', 'HS256')),
    key          bytea NOT NULL,
    activated_at timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz,
    valid_until  timestamptz,
    PRIMARY KEY (school_id, key_id),
    CHECK ((retired_at IS NULL) = (valid_until IS NULL))
);
-- At most one current key per school.
CREATE UNIQUE INDEX consent_keys_current ON consent_keys (school_id) WHERE retired_at IS NULL;

-- Schools registered before this migration: their key is their first.
INSERT INTO consent_keys (school_id, key_id, alg, key, activated_at)
SELECT school_id, 1, consent_alg, consent_key, created_at FROM schools;

ALTER TABLE signers ADD COLUMN cert_sha256 text;
ALTER TABLE signers ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE signers ADD COLUMN deactivated_at timestamptz;

CREATE TABLE rosters (
    school_id         text NOT NULL REFERENCES schools (school_id),
    academic_year     text NOT NULL,
    submission_round  smallint NOT NULL CHECK (submission_round IN (1, 2)),
    sent_at           timestamptz NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    message_id        text,
    -- The students of every class: the records this school must sign this round.
    expected_records  integer NOT NULL CHECK (expected_records >= 0),
    principals        text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (school_id, academic_year, submission_round)
);

CREATE TABLE roster_classes (
    school_id         text NOT NULL,
    academic_year     text NOT NULL,
    submission_round  smallint NOT NULL,
    class_name        text NOT NULL,
    grade             smallint NOT NULL,
    homeroom_teacher  text NOT NULL,
    students          integer NOT NULL CHECK (students >= 0),
    PRIMARY KEY (school_id, academic_year, submission_round, class_name),
    FOREIGN KEY (school_id, academic_year, submission_round)
        REFERENCES rosters (school_id, academic_year, submission_round) ON DELETE CASCADE
);

-- The hook for corrections (sign request v2 `corrects`): a record that corrects another
-- may coexist with it; the corrected record stays the live one until the correction is
-- issued, when v2 moves live_records to the correction.
ALTER TABLE records ADD COLUMN corrects text;

CREATE TABLE live_records (
    school_id         text NOT NULL,
    academic_year     text NOT NULL,
    submission_round  smallint NOT NULL,
    student_id        text NOT NULL,
    record_id         text NOT NULL,
    PRIMARY KEY (school_id, academic_year, submission_round, student_id),
    FOREIGN KEY (school_id, record_id) REFERENCES records (school_id, record_id)
);

-- Records held before this migration: the first per student is the live one; any later
-- one already held keeps going (it is refused only when it would be created now).
INSERT INTO live_records (school_id, academic_year, submission_round, student_id, record_id)
SELECT DISTINCT ON (school_id, academic_year, submission_round, student_id)
       school_id, academic_year, submission_round, student_id, record_id
FROM records
ORDER BY school_id, academic_year, submission_round, student_id, created_at, record_id;

CREATE FUNCTION records_one_live_per_student() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.corrects IS NULL THEN
        -- A second record for the student raises unique_violation here, and the whole
        -- statement that stores the signature fails with it.
        INSERT INTO live_records (school_id, academic_year, submission_round, student_id,
                                  record_id)
        VALUES (NEW.school_id, NEW.academic_year, NEW.submission_round, NEW.student_id,
                NEW.record_id);
    END IF;
    RETURN NULL;
END;
$$;
-- AFTER, not BEFORE: with INSERT ... ON CONFLICT DO NOTHING a BEFORE trigger would
-- also fire for the row that conflicts and is never inserted.
CREATE TRIGGER records_one_live_per_student AFTER INSERT ON records
    FOR EACH ROW EXECUTE FUNCTION records_one_live_per_student();
