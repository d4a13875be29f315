import hashlib
from pathlib import Path

import pytest

from daemon.errors import StoreUnavailable
from daemon.store import FileStore


async def test_documents_are_stored_by_digest_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    digest = await store.put(b"%PDF-1.7 one")
    assert digest == hashlib.sha256(b"%PDF-1.7 one").hexdigest()
    assert await store.put(b"%PDF-1.7 one") == digest
    assert await store.get(digest) == b"%PDF-1.7 one"
    assert not list(tmp_path.rglob(".tmp-*"))


async def test_a_corrupt_document_is_detected(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    digest = await store.put(b"%PDF-1.7 two")
    store.path(digest).write_bytes(b"%PDF-1.7 tampered")
    with pytest.raises(StoreUnavailable):
        await store.get(digest)


async def test_a_missing_document_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        await FileStore(tmp_path).get("ab" * 32)
