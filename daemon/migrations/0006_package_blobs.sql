-- Packages are blobs: a built package is named by its container's sha256 in the blob
-- store (`store.backend`), no longer by a local file. `path` stays for packages built
-- before this version (their file is moved into the store when they are next sent);
-- it is no longer written. Only added here, so instances of the previous version keep
-- working while this applies (they write both `sha256` and `path`).

COMMENT ON COLUMN packages.path IS
    'Deprecated: the local file of a package built before packages were blobs; NULL since.';
COMMENT ON COLUMN packages.sha256 IS
    'The container''s sha256: its name in the blob store.';

-- Every package past `building` must be findable in the store by its digest. NOT VALID:
-- checked for new and updated rows only, so the migration never scans or fails on old ones.
ALTER TABLE packages ADD CONSTRAINT packages_built_have_digest
    CHECK (state = 'building' OR sha256 IS NOT NULL) NOT VALID;
