-- An operator's action on a package in `attention` (`hocba-signer package-resume`,
-- `package-reject`) is a row of its submission history, kind `operator`, outcome
-- `resumed` or `rejected`. Lost receipts are counted from the latest `resumed` row, so a
-- resumed package gets `ministry.max_receipt_resends` resends again.

ALTER TABLE submission_attempts DROP CONSTRAINT submission_attempts_kind_check;
ALTER TABLE submission_attempts ADD CONSTRAINT submission_attempts_kind_check
    CHECK (kind IN ('submit', 'poll', 'operator'));
