"""The audit trail you can prove: hash chains per school, anchors, and their verification.

`chain` (the canonical form of an entry and of a set of heads, and the one INSERT every
writer uses), `anchors` (the chains' heads timestamped by the TSA, on a schedule),
`verify` (walks chains and anchors, cross-checks signatures, versions and documents).
The hash itself is computed by the database (migration 0010's trigger; 0012 made it
cheaper without changing its bytes), recomputed here.
"""
