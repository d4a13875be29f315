-- Long-term validation renewal (`hocba-signer ltv renew`, daemon/renewal.py).
-- A renewal adds fresh validation data and a document timestamp to an issued record:
-- the content is the same, the file is a new version (4, 5, ...) of the record.
ALTER TABLE record_versions DROP CONSTRAINT record_versions_version_check;
ALTER TABLE record_versions ADD CONSTRAINT record_versions_version_check CHECK (version >= 0);

-- Until when a version's newest timestamp proves it (its TSA certificate's expiry, or
-- its own time if its algorithm is weak; NULL: the version has no timestamp). Keyed by
-- the version's sha256: a version never changes, so neither does its horizon, and a
-- daily run reads each issued file once, not every day.
CREATE TABLE ltv_horizons (
    sha256      text PRIMARY KEY,
    expires_at  timestamptz,
    reason      text NOT NULL CHECK (reason IN ('certificate', 'algorithm', 'none')),
    read_at     timestamptz NOT NULL DEFAULT now()
);
