-- Certificate status answers (OCSP responses, or the CRL that answered), shared by all
-- instances so that N instances ask the responder once per certificate per nextUpdate.
-- A row is the newest answer for one certificate; it is used until `next_update`.
-- `answer` is the DER of what was fetched (an OCSPResponse or a CertificateList): the
-- seal stage embeds it in the record's document security store at B-LT and B-LTA.

CREATE TABLE certificate_status (
    issuer_sha256  text NOT NULL,          -- sha256 of the issuer certificate's DER
    serial         text NOT NULL,          -- the certificate's serial number, hex
    status         text NOT NULL CHECK (status IN ('good', 'revoked')),
    source         text NOT NULL CHECK (source IN ('ocsp', 'crl')),
    revoked_at     timestamptz,
    answer         bytea NOT NULL,
    this_update    timestamptz NOT NULL,
    next_update    timestamptz NOT NULL,
    fetched_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer_sha256, serial),
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
