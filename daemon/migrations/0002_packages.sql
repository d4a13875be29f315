-- Packages of issued records per (school, academic year, round), and their submissions.

CREATE TABLE packages (
    package_id        uuid PRIMARY KEY,
    school_id         text NOT NULL REFERENCES schools (school_id),
    academic_year     text NOT NULL,
    submission_round  smallint NOT NULL CHECK (submission_round IN (1, 2)),
    -- 1 for the first package of a round, 2.. for follow-ups of records issued later.
    sequence          smallint NOT NULL CHECK (sequence >= 1),
    state             text NOT NULL CHECK (state IN
                      ('building', 'built', 'submitting', 'submitted', 'accepted', 'rejected')),
    -- The CAdES signing time, fixed when the package is created: a rebuild after a
    -- crash reuses it, so the container comes out byte for byte the same.
    signing_time      timestamptz NOT NULL,
    record_count      integer NOT NULL CHECK (record_count >= 1),
    sha256            text,
    size_bytes        bigint,
    path              text,
    receipt_id        text,
    attempts          integer NOT NULL DEFAULT 0,
    accepted_records  integer,
    errors            jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (school_id, academic_year, submission_round, sequence)
);
CREATE INDEX packages_unfinished ON packages (state)
    WHERE state NOT IN ('accepted', 'rejected');

CREATE TABLE package_records (
    package_id  uuid NOT NULL REFERENCES packages (package_id),
    school_id   text NOT NULL,
    record_id   text NOT NULL,
    sha256      text NOT NULL,
    -- False once the ministry rejected the package: the record may be packaged again.
    active      boolean NOT NULL DEFAULT true,
    PRIMARY KEY (package_id, record_id),
    FOREIGN KEY (school_id, record_id) REFERENCES records (school_id, record_id)
);
-- A record is in at most one live package, so never in two accepted ones.
CREATE UNIQUE INDEX package_records_live ON package_records (school_id, record_id) WHERE active;

CREATE TABLE submission_attempts (
    id           bigserial PRIMARY KEY,
    package_id   uuid NOT NULL REFERENCES packages (package_id),
    kind         text NOT NULL CHECK (kind IN ('submit', 'poll')),
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    http_status  integer,
    outcome      text NOT NULL,
    receipt_id   text,
    detail       text,
    latency_s    double precision
);
CREATE INDEX submission_attempts_package ON submission_attempts (package_id, id);
