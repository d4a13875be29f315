"""`hocba-signer verify-server`: the public verification page and API, read-only, on its own port.

Anyone who holds a record (a parent, a school clerk, another school) drops the PDF or
the package on the page, or POSTs it to `/v1/verify`; a printed copy's QR code opens
`/r/<sha256>`. This is a public service, so: the body's size is checked from its
header and again while it is read; each client IP has a token bucket
(daemon.verification.ratelimit); reading the body and each check have timeouts; the
checks (pyHanko, CPU-bound) run in a process pool, and no more than
`workers * queue_per_worker` wait at once, so one large package delays no one else for
long; the registry is only ever read (daemon.verification.lookup), and after each check
the main process judges the file again with who the registry has its signers as
(daemon.verification.basis: a certificate claiming a role the registry does not give
its holder is `role_mismatch`, one it does not know for a school it holds is
`signer_not_registered`). Logs carry digests,
kinds, sizes and verdicts, never a name, a student id or a client address (the access
log is off for that reason). The page needs nothing from elsewhere: its CSS and script
are served here, under a Content-Security-Policy that allows nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from importlib import resources
from string import Template
from typing import Any

from aiohttp import web

from daemon.errors import DatabaseUnavailable
from daemon.settings import Settings, VerifyServerSettings
from daemon.verification import checks, lookup
from daemon.verification.pool import Busy, Checker, DatabaseRegistry, PoolChecker, Registry
from daemon.verification.ratelimit import RateLimiter

log = logging.getLogger("hocba_signer.verify_server")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_STATIC = {"app.js": "text/javascript", "app.css": "text/css", "icon.svg": "image/svg+xml"}
_CHUNK_BYTES = 256 * 1024
LANGS = ("vi", "en")


def build_app(
    settings: VerifyServerSettings, checker: Checker, registry: Registry
) -> web.Application:
    app = web.Application(middlewares=[_security_headers], client_max_size=settings.max_body_bytes)
    handlers = _Handlers(settings, checker, registry)
    app.router.add_get("/", handlers.page)
    app.router.add_get("/r/{sha256}", handlers.landing)
    app.router.add_get("/static/{name}", handlers.static)
    app.router.add_get("/favicon.ico", handlers.icon)
    app.router.add_post("/v1/verify", handlers.verify)
    app.router.add_get("/v1/records/by-digest/{sha256}", handlers.by_digest)
    return app


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The server until `stop` is set: database pool, process pool, HTTP site."""
    from daemon.database import Database

    server = settings.verify_server
    async with AsyncExitStack() as stack:
        db = Database(settings.database.for_verifier())
        await db.open()
        stack.push_async_callback(db.close)
        checker = PoolChecker(settings)
        stack.callback(checker.close)
        await checker.start()
        app = build_app(server, checker, DatabaseRegistry(db))
        runner = await start(app, server.host, server.port)
        stack.push_async_callback(runner.cleanup)
        log.info("Verification server listening on %s:%d.", server.host, server.port)
        await stop.wait()


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    # No access log: it would record every client's address.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a site started on port 0 listens on."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("The verification server is not listening.")


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _secure(exc.headers)
        raise
    _secure(response.headers)
    return response


def _secure(headers: Any) -> None:
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers.setdefault("Cache-Control", "no-store")


class _Handlers:
    def __init__(self, settings: VerifyServerSettings, checker: Checker, registry: Registry):
        self._settings = settings
        self._checker = checker
        self._registry = registry
        self._limiter = RateLimiter(settings.rate_per_minute, settings.rate_burst)
        self._strings = json.loads(_page_file("strings.json"))
        self._template = Template(_page_file("index.html"))

    async def page(self, request: web.Request) -> web.Response:
        return self._render(_lang(request), landing="", expected="")

    async def landing(self, request: web.Request) -> web.Response:
        sha256 = request.match_info["sha256"].lower()
        lang = _lang(request)
        if not lookup.SHA256.fullmatch(sha256):
            raise web.HTTPNotFound(text="Not a SHA-256.")
        self._limit(request)
        found = await self._registered(sha256)
        body = self._render(lang, landing=self._landing_html(lang, found, sha256), expected=sha256)
        return body

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(
            body=_page_file(name).encode(),
            content_type=_STATIC[name],
            charset="utf-8",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    async def icon(self, request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/static/icon.svg")

    async def verify(self, request: web.Request) -> web.Response:
        self._limit(request)
        if (request.content_type or "") not in checks.KINDS:
            raise _error(
                web.HTTPUnsupportedMediaType, "unsupported_type", "Send a PDF or an .asice."
            )
        body, sha256 = await self._read_body(request)
        kind = checks.kind_of(request.content_type, body[:1024])
        if kind is None:
            raise _error(web.HTTPUnsupportedMediaType, "unsupported_type", "Not a PDF or package.")
        started_s = time.monotonic()
        try:
            report = await self._checker.check(kind, body, self._registry)
        except Busy:
            log.warning("Refused a %s of %d bytes: every check slot is taken.", kind, len(body))
            raise _error(
                web.HTTPServiceUnavailable, "busy", "Too busy; try again.", retry_s=5
            ) from None
        except TimeoutError:
            log.warning("The check of %s (%s, %d bytes) timed out.", sha256, kind, len(body))
            raise _error(
                web.HTTPServiceUnavailable, "timeout", "The check took too long."
            ) from None
        report["sha256"] = sha256
        await self._add_registered(report)
        log.info(
            "Verified %s %s (%d bytes): %s in %.3fs.",
            kind,
            sha256,
            len(body),
            report["verdict"],
            time.monotonic() - started_s,
        )
        return web.json_response(report, dumps=_dumps)

    async def by_digest(self, request: web.Request) -> web.Response:
        sha256 = request.match_info["sha256"].lower()
        if not lookup.SHA256.fullmatch(sha256):
            raise _error(web.HTTPBadRequest, "not_a_sha256", "Give 64 hexadecimal digits.")
        self._limit(request)
        found = await self._registered(sha256)
        if found is None:
            raise _error(web.HTTPServiceUnavailable, "registry_unavailable", "Try again later.")
        return web.json_response(found.as_json(), dumps=_dumps)

    def _limit(self, request: web.Request) -> None:
        wait_s = self._limiter.take(_client(request, self._settings.trusted_proxies))
        if wait_s > 0:
            log.info("Rate-limited a client on %s.", request.path.split("/")[1])
            raise _error(web.HTTPTooManyRequests, "rate_limited", "Too many requests.", wait_s)

    async def _read_body(self, request: web.Request) -> tuple[bytes, str]:
        """The body, refused (413) as soon as it is known to exceed the limit; its sha256."""
        limit = self._settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit, request.content_length)
        digest, parts, size = hashlib.sha256(), [], 0
        try:
            async with asyncio.timeout(self._settings.read_timeout_s):
                async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit, size)
                    digest.update(chunk)
                    parts.append(chunk)
        except TimeoutError:
            raise _error(web.HTTPRequestTimeout, "timeout", "The upload took too long.") from None
        return b"".join(parts), digest.hexdigest()

    async def _registered(self, sha256: str) -> lookup.Registered | None:
        try:
            return await self._registry.registered(sha256)
        except DatabaseUnavailable as exc:
            log.warning("Registry look-up of %s failed: %s", sha256, exc.message)
            return None

    async def _add_registered(self, report: dict[str, Any]) -> None:
        targets = [report, *report.get("records", {}).values()]
        for target in targets:
            sha256 = target.get("sha256")
            found = await self._registered(sha256) if sha256 else None
            target["registered"] = found.summary() if found else None

    def _render(self, lang: str, *, landing: str, expected: str) -> web.Response:
        words = self._strings[lang]
        other = "en" if lang == "vi" else "vi"
        page = self._template.substitute(
            lang=lang,
            title=html.escape(words["title"]),
            intro=html.escape(words["intro"]),
            choose=html.escape(words["choose"]),
            drop=html.escape(words["drop"]),
            privacy=html.escape(words["privacy"]),
            other_lang=other,
            other_lang_name=html.escape(self._strings[other]["lang_name"]),
            landing=landing,
            expected=html.escape(expected),
            # A JSON data block, never run; "<" escaped so it cannot close the element.
            strings=json.dumps(words, ensure_ascii=False).replace("<", "\\u003c"),
        )
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    def _landing_html(self, lang: str, found: lookup.Registered | None, sha256: str) -> str:
        words = self._strings[lang]
        if found is None:
            return (
                f'<section class="landing"><p>{html.escape(words["registry_down"])}</p></section>'
            )
        state = found.state
        rows = [
            (words["school"], f"{found.school_name or ''} ({found.school_id})"
             if found.school_id else None),
            (words["record"], found.record_id),
            (words["replaced_by"], found.replaced_by),
            (words["digest"], sha256),
        ]  # fmt: skip
        rows += [(words["roles"][s["stage"]], _vietnam_time(s["signed_at"])) for s in found.signed]
        table = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows if v
        )
        return (
            f'<section class="landing"><p class="lead">{html.escape(words["landing_lead"])}</p>'
            f'<div class="verdict {html.escape(state)}">'
            f"{html.escape(words['registered_state'][state])}</div>"
            f'<table class="facts">{table}</table>'
            f"<p>{html.escape(words['landing_check'])}</p></section>"
        )


def _vietnam_time(iso: str) -> str:
    from datetime import datetime

    from daemon.clock import VIETNAM

    return datetime.fromisoformat(iso).astimezone(VIETNAM).strftime("%d/%m/%Y %H:%M")


def _lang(request: web.Request) -> str:
    lang = request.query.get("lang", "vi")
    return lang if lang in LANGS else "vi"


def _client(request: web.Request, trusted_proxies: list[str]) -> str:
    """The client's address: the peer, or the last address a trusted proxy added."""
    peer = request.remote or "unknown"
    if peer not in trusted_proxies:
        return peer
    chain = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
    untrusted = [a for a in chain if a not in trusted_proxies]
    return untrusted[-1] if untrusted else peer


def _error(
    kind: type[web.HTTPException], code: str, message: str, retry_s: float | None = None
) -> web.HTTPException:
    headers = {"Retry-After": str(max(1, round(retry_s + 0.5)))} if retry_s is not None else None
    return kind(
        text=json.dumps({"error": code, "message": message}),
        content_type="application/json",
        headers=headers,
    )


def _too_large(limit: int, size: int) -> web.HTTPException:
    body = {"error": "too_large", "message": f"The file is larger than {limit} bytes."}
    return web.HTTPRequestEntityTooLarge(
        max_size=limit, actual_size=size, text=json.dumps(body), content_type="application/json"
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _page_file(name: str) -> str:
    return resources.files("daemon.verification").joinpath("page", name).read_text("utf-8")
