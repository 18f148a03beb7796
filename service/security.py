"""Request ids, security headers and the log-record field that carries the request id.

Pure ASGI middleware (no body buffering: uploads stream through). Every response gets `X-Request-ID`
(the client's own when it is well-formed, else a new one) and the security headers below; every log
line written while a request runs carries its id (`request_id` on the log record).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import uuid
from collections.abc import Mapping
from contextvars import ContextVar

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
_WELL_FORMED = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

# The API answers JSON and files: nothing on a response may run, embed or be embedded.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# The pages (the web page `/`, files in service/static, and Swagger UI's /docs, files under /docs/static):
# their own scripts and styles only, media and downloads from the blob: URLs the web page makes of what it
# fetched with the API key, requests to this origin only. Inline code never, except the one init script of
# FastAPI's /docs page, allowed by its hash (`docs_csp`), never by 'unsafe-inline'.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'{script_hashes}; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
WEB_CSP = PAGE_CSP.format(script_hashes="")
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def inline_script_hashes(html: str) -> list[str]:
    """CSP sources (`'sha256-...'`) of the inline scripts (`<script>` without attributes) of a page."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]


def docs_csp(html: str) -> str:
    """PAGE_CSP for one Swagger UI page: its inline scripts allowed by hash."""
    return PAGE_CSP.format(script_hashes="".join(" " + h for h in inline_script_hashes(html)))


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def new_request_id(given: str | None) -> str:
    if given and _WELL_FORMED.match(given):
        return given
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Sets the request id (context variable + `X-Request-ID`) and the security headers."""

    def __init__(self, app: ASGIApp, page_csp: Mapping[str, str] | None = None) -> None:
        self.app = app
        # Paths that serve a page (the web page, /docs) -> their policy; every other response: API_CSP.
        self.page_csp = dict(page_csp or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        rid = new_request_id(given)
        token = request_id_var.set(rid)
        csp = self.page_csp.get(scope.get("path", ""), API_CSP)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = rid
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                # A route that serves a page of its own sets its own policy.
                headers.setdefault("Content-Security-Policy", csp)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            request_id_var.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (format it with `%(request_id)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def install_log_request_ids() -> None:
    """Give every log record a `request_id` attribute, whichever logger or handler writes it."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_diffv2s_request_id", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)  # type: ignore[arg-type]
        record.request_id = request_id_var.get()
        return record

    factory._diffv2s_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
