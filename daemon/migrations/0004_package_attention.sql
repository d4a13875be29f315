-- A package whose receipt the ministry kept losing (404 on polling, then resent under
-- the same Idempotency-Key, several times) stops in `attention`: not resumed at
-- start-up, its records kept in it, for an operator to look at.

ALTER TABLE packages DROP CONSTRAINT packages_state_check;
ALTER TABLE packages ADD CONSTRAINT packages_state_check CHECK (state IN
    ('building', 'built', 'submitting', 'submitted', 'accepted', 'rejected', 'attention'));
