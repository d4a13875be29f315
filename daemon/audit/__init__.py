"""The audit trail you can prove: hash chains per school, anchors, and their verification.

`chain` (the canonical form of an entry and of a set of heads, and the one INSERT every
writer uses), `anchors` (the chains' heads timestamped by the TSA, on a schedule),
`verify` (walks the chains, page by page, each up to the head it read first),
`crosscheck` (anchors, signatures, versions and documents against the entries) and
`report` (what a walk found; the paged reading both share).
The hash itself is computed by the database (migration 0010's trigger; 0012 made it
cheaper without changing its bytes), recomputed here.
"""
