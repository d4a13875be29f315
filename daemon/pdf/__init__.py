"""The PDF and CMS engine: reading PDFs, writing signed incremental updates, validating them.

Its public face is four modules; the rest serves them:

* `pades`: `prepare_and_sign` (a record's next PAdES signature, hand-written where the
  file is one we expect, pyHanko otherwise), `inspect_pdf`, `read_pdf`.
* `validation`: each signature's report with pyHanko's validator.
* `dss_update`: the sealed record's LTV revision (DSS, document timestamp), for daemon/ltv.
* `intake`: the intake check of a teacher's PDF in one read by `reader`, for the files
  pyHanko would accept (every other file, and every refusal, is `pades.inspect_pdf`'s).

Inside: `syntax` (PDF objects from bytes and back) ← `reader` (xref sections, object
streams) ← `certification` (stage 1; with `annotations`, which makes inline annotations
objects on both paths) and `incremental` (stages 2 and 3) ← `pades`;
`cms` builds the CMS SignedData around a raw signature. It imports nothing of the
service but `daemon.errors` and `daemon.stages`, and nothing of it does I/O.
"""
