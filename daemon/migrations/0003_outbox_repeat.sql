-- Repeated answers are published again but not retained on MQTT; repeats find their
-- first event by event_id without walking the outbox; requests are matched by what
-- they ask, not by the bytes they were sent in.

ALTER TABLE outbox ADD COLUMN repeat boolean NOT NULL DEFAULT false;
CREATE INDEX outbox_event_id ON outbox (event_id);
ALTER TABLE requests RENAME COLUMN body_sha256 TO fingerprint;
