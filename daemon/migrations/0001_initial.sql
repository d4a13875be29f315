-- Schools, signers, records, versions, signatures, requests, audit trail, outbox.

CREATE TABLE schools (
    school_id      text PRIMARY KEY,
    name           text NOT NULL,
    consent_alg    text NOT NULL CHECK (consent_alg IN ('EdDSA', 'HS256')),
    consent_key    bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE signers (
    school_id      text NOT NULL REFERENCES schools (school_id),
    signer_id      text NOT NULL,
    stage          text NOT NULL
                   CHECK (stage IN ('homeroom_teacher', 'principal', 'school_seal')),
    token_label    text NOT NULL,
    key_label      text NOT NULL,
    cert_serial    text NOT NULL,
    cert_not_after timestamptz NOT NULL,
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (school_id, signer_id),
    -- A key is namespaced by its school, so no school can reference another's key.
    CHECK (starts_with(key_label, school_id || '/'))
);

CREATE TABLE records (
    school_id        text NOT NULL REFERENCES schools (school_id),
    record_id        text NOT NULL,
    student_id       text NOT NULL,
    academic_year    text NOT NULL,
    grade            smallint NOT NULL,
    class_name       text NOT NULL,
    submission_round smallint NOT NULL CHECK (submission_round IN (1, 2)),
    state            text NOT NULL,
    signatures       smallint NOT NULL CHECK (signatures BETWEEN 1 AND 3),
    current_sha256   text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (school_id, record_id)
);
CREATE INDEX records_progress ON records (school_id, academic_year, submission_round, state);

CREATE TABLE record_versions (
    school_id   text NOT NULL,
    record_id   text NOT NULL,
    version     smallint NOT NULL CHECK (version BETWEEN 0 AND 3),
    sha256      text NOT NULL,
    size_bytes  integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (school_id, record_id, version),
    FOREIGN KEY (school_id, record_id) REFERENCES records (school_id, record_id)
);

CREATE TABLE signatures (
    school_id      text NOT NULL,
    record_id      text NOT NULL,
    stage          text NOT NULL,
    signer_id      text NOT NULL,
    cert_serial    text NOT NULL,
    signed_at      timestamptz NOT NULL,
    digest_before  text NOT NULL,
    digest_after   text NOT NULL,
    request_id     uuid NOT NULL,
    -- Exactly one signature per stage per record, whatever races happen above.
    PRIMARY KEY (school_id, record_id, stage),
    FOREIGN KEY (school_id, record_id) REFERENCES records (school_id, record_id),
    FOREIGN KEY (school_id, signer_id) REFERENCES signers (school_id, signer_id)
);

CREATE TABLE requests (
    request_id    uuid PRIMARY KEY,
    school_id     text NOT NULL,
    record_id     text,
    stage         text,
    body_sha256   text NOT NULL,
    state         text NOT NULL,
    reason_code   text,
    event_id      uuid NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    school_id   text,
    record_id   text,
    request_id  uuid,
    action      text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_record ON audit_log (school_id, record_id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE outbox (
    id                 bigserial PRIMARY KEY,
    event_id           uuid NOT NULL,
    school_id          text NOT NULL,
    record_id          text,
    state              text NOT NULL,
    payload            jsonb NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    amqp_published_at  timestamptz,
    mqtt_published_at  timestamptz
);
CREATE INDEX outbox_pending_amqp ON outbox (id) WHERE amqp_published_at IS NULL;
CREATE INDEX outbox_pending_mqtt ON outbox (id) WHERE mqtt_published_at IS NULL;
