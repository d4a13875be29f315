-- Who signed with a certificate, found by its serial: the verifier's registry look-up
-- (daemon/verification/lookup.py) asks, for a certificate the `signers` table no longer
-- holds (renewed since), which signer this deployment signed with it. signers holds
-- each signer's current certificate (cert_sha256, its fingerprint, since 0008; rows
-- made before, or by `dev init`, have only the serial); signatures keep the serial of
-- every certificate ever used. A serial is unique only per issuing CA, so the look-up
-- prefers the fingerprint and takes a serial only where no fingerprint matched.
CREATE INDEX signatures_cert_serial ON signatures (cert_serial);
