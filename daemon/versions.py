"""A round's PDFs in the blob store: read together, written together.

`held` reads the current versions a round's later stages sign in one call; `put`
writes every version a round signed and made (a teacher's and each signed one) in
one `put_many`, durable before any row names them (daemon/storing.py). Either way,
a PDF the store cannot give or take fails only its own request.
"""

from __future__ import annotations

import logging

from daemon import records
from daemon.blobs import BlobStore, Hashed
from daemon.messages import SignRequest
from daemon.stages import Stage

log = logging.getLogger(__name__)


async def held(
    store: BlobStore, requests: list[SignRequest], found: list[records.Lookup]
) -> dict[str, bytes | Exception]:
    """The current versions the round's later stages sign: each the bytes, or its error.

    A version not here (the store failed as a whole) is read by its own request.
    """
    digests = list(
        {
            f.record.current_sha256: None
            for r, f in zip(requests, found, strict=True)
            if r.stage is not Stage.HOMEROOM_TEACHER and f.prior is None and f.record
        }
    )
    try:
        return dict(zip(digests, await store.get_many(digests), strict=True))
    except Exception as exc:
        log.warning("The round's %d versions are read one by one: %s", len(digests), exc)
        return {}


async def put(store: BlobStore, versions: list[list[Hashed]]) -> list[Exception | None]:
    """Store each signature's PDFs: the error that kept each from the store, or None.

    The batch's in one `put_many`; if that fails, each signature's alone, so that one
    that cannot be stored fails only its own request.
    """
    if not versions:
        return []
    try:
        await store.put_many([pdf for pdfs in versions for pdf in pdfs])
        return [None] * len(versions)
    except Exception as exc:
        if len(versions) == 1:
            return [exc]
        log.warning("A batch of %d signed PDFs is stored one by one: %s", len(versions), exc)
    failed: list[Exception | None] = []
    for pdfs in versions:
        try:
            await store.put_many(pdfs)
        except Exception as exc:
            failed.append(exc)
        else:
            failed.append(None)
    return failed
