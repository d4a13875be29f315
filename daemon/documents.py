"""The homeroom teacher's document: inline or fetched by reference, then checked.

A v2 record is rendered in a process pool (`RenderPool`, built once by the composition
root, `signing.render_workers`; 0 renders in a thread): rendering is pure-Python CPU
work (~8 ms a record), which in a thread holds the GIL the event loop needs, so a
burst of records would stall every other request. The HSM workers are not used for
it: their slots are the token's sessions, needed by signatures.

Every document passes the intake check (`inspect_document`): daemon/pdf/intake.py for a
file our reader reads, in one read; pyHanko (`pades.inspect_pdf`,
`attached.attached_record_xml`) for the others and for every refusal.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import aiohttp
from yarl import URL

from daemon.errors import (
    DocumentFetchFailed,
    DocumentUnavailable,
    HashMismatch,
    InternalError,
    NotAPdf,
)
from daemon.messages import Document, SignRequest, SignRequestV2
from daemon.offload import Offload
from daemon.pdf import intake
from daemon.pdf.pades import inspect_pdf
from daemon.pdf.reader import Unsupported
from daemon.record.attached import attached_record_xml, check_record_xml
from daemon.record.model import RecordData
from daemon.record.render import render_record, warm_fonts
from daemon.record.xml import FILENAME, MAX_XML_BYTES
from daemon.settings import SigningSettings

_PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 414, 451})
log = logging.getLogger(__name__)


def inspect_document(pdf: bytes, max_bytes: int, *, attached: bool) -> bytes | None:
    """Accept a teacher's unsigned PDF or raise NotAPdf (InvalidMessage for its XML).

    With `attached`, the bytes of the hocba-record.xml it carries (None without).
    A file daemon/pdf/intake.py does not handle, or would not accept, is read by
    pyHanko, which refuses bad files with its precise reasons.
    """
    try:
        document = intake.accepted(pdf, max_bytes)
    except Unsupported as exc:
        log.debug("Intake of a %d-byte PDF by pyHanko: %s", len(pdf), exc)
        inspect_pdf(pdf, max_bytes)
        document = None
    # check_attached_record's first look, on both paths (daemon/record/attached.py).
    if not attached or b"EmbeddedFile" not in pdf:
        return None
    if document is not None:
        try:
            return intake.embedded_file(document, FILENAME, MAX_XML_BYTES)
        except Unsupported as exc:
            log.debug("Attachments of a %d-byte PDF read by pyHanko: %s", len(pdf), exc)
    return attached_record_xml(pdf)


def render_checked(record_id: str, record_data: RecordData, max_bytes: int) -> bytes:
    """The record's PDF, accepted by the intake check as any teacher's PDF must be."""
    pdf = render_record(record_id, record_data)
    inspect_document(pdf, max_bytes, attached=False)
    return pdf


def _warm() -> None:
    """A render worker's start: the fonts cut before its first record waits for them."""
    warm_fonts()


class RenderPool:
    """Processes that render v2 records; 0 workers renders in a thread (tests, tools)."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def _spawned(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # Spawned, not forked: a fork would copy the event loop and open sockets.
            self._executor = ProcessPoolExecutor(
                self._workers, mp_context=get_context("spawn"), initializer=_warm
            )
        return self._executor

    async def render(self, record_id: str, record_data: RecordData, max_bytes: int) -> bytes:
        if self._workers == 0:
            return await asyncio.to_thread(render_checked, record_id, record_data, max_bytes)
        executor = self._spawned()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                executor, render_checked, record_id, record_data, max_bytes
            )
        except BrokenProcessPool as exc:
            log.warning("A render worker died rendering record %s; replacing the pool.", record_id)
            if self._executor is executor:
                self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)
            raise InternalError("A render worker process died.") from exc

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)


class DocumentSource:
    """Fetches referenced documents from allowed hosts only, bounded in size and time."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: SigningSettings,
        renderer: RenderPool | None = None,
    ) -> None:
        self._session = session
        self._renderer = renderer or RenderPool(0)
        self._max_bytes = settings.max_document_bytes
        self._timeout = aiohttp.ClientTimeout(total=settings.fetch_timeout_s)
        self._hosts = frozenset(h.lower() for h in settings.fetch_allowed_hosts)
        self._schemes = {"https", "http"} if settings.fetch_allow_http else {"https"}
        self._offload = Offload()  # a round's inspections in one thread hop

    async def content(self, document: Document, request: SignRequest | None = None) -> bytes:
        """The document's bytes, matching its announced sha256.

        With the request, a hocba-record.xml the PDF carries must describe its record.
        """
        data = document.inline_bytes()
        if data is None:
            data = await self._fetch(str(document.url))
        if len(data) > self._max_bytes:
            raise NotAPdf(f"Document is larger than {self._max_bytes} bytes.")
        if hashlib.sha256(data).hexdigest() != document.sha256:
            raise HashMismatch("Document sha256 does not match its content.")
        # Parsing is CPU work on untrusted bytes: off the event loop, with the other
        # inspections of its round (the pipeline decides a round's requests in one gather).
        await self._offload(self._inspect, data, request)
        return data

    async def rendered(self, request: SignRequestV2) -> bytes:
        """The PDF/A-3 the record's data renders to, checked as any teacher's PDF is."""
        assert request.record_data is not None
        return await self._renderer.render(
            request.record.record_id, request.record_data, self._max_bytes
        )

    def _inspect(self, data: bytes, request: SignRequest | None) -> None:
        xml = inspect_document(data, self._max_bytes, attached=request is not None)
        if request is not None and xml is not None:
            check_record_xml(xml, request.school_id, request.record)

    async def _fetch(self, url: str) -> bytes:
        self._check_allowed(URL(url))
        try:
            async with self._session.get(
                url, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status in _PERMANENT_STATUSES or 300 <= response.status < 400:
                    raise DocumentUnavailable(f"Document URL answered HTTP {response.status}.")
                if response.status != 200:
                    raise DocumentFetchFailed(f"Document URL answered HTTP {response.status}.")
                return await self._read_bounded(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DocumentFetchFailed(f"Document fetch failed: {type(exc).__name__}.") from exc

    def _check_allowed(self, url: URL) -> None:
        if (url.host or "").lower() not in self._hosts:
            raise DocumentUnavailable("Documents are not fetched from that host.")
        if url.scheme not in self._schemes:
            raise DocumentUnavailable(
                f"Documents are fetched over {', '.join(sorted(self._schemes))} only."
            )

    async def _read_bounded(self, response: aiohttp.ClientResponse) -> bytes:
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(65_536):
            size += len(chunk)
            if size > self._max_bytes:
                raise NotAPdf(f"Document is larger than {self._max_bytes} bytes.")
            chunks.append(chunk)
        return b"".join(chunks)
