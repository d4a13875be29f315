"""Long-term validation: signatures whose legal value outlasts their certificates.

* `levels.leveled_signing` wraps the HSM pool with `signing.level`: the certificate's
  status before any key is used (`status`: OCSP, the CRL as fallback, answers cached in
  PostgreSQL for every instance), RFC 3161 signature timestamps (`timestamps`), and at
  the seal the DSS and a document timestamp (`dss`, written by daemon/pdf/dss_update.py;
  pyHanko for a renewal).
* `renewal` adds fresh validation data and a document timestamp to issued records whose
  newest timestamp expires soon (`hocba-signer ltv renew` and the daily task).

It imports the foundations, the PDF room and the blob store; nothing imports it but
the composition roots and the audit room (whose anchors use the TSA client).
"""
