"""The web page (`/`) and Swagger UI (`/docs`) as the gateway serves them (in-process app, real Redis):
each page and every file it references come from the gateway itself, with a self-only Content-Security-
Policy, no inline code the policy does not allow, no external URL, and nothing in the OpenAPI schema."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from service.settings import Settings

pytestmark = pytest.mark.anyio

# XML namespace names (an SVG's xmlns) are identifiers, never fetched.
NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
EXTERNAL = re.compile(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"'<>)]*")


class Page(HTMLParser):
    """The files a page loads (script src, stylesheet/icon href, img/media src) and its inline scripts
    and style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []
        self.inline_scripts: list[str] = []
        self.style_attrs = 0
        self.inline_handlers = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "style" in a:
            self.style_attrs += 1
        self.inline_handlers += sum(1 for name in a if name.startswith("on"))
        if tag == "script":
            if a.get("src"):
                self.assets.append(a["src"] or "")
            else:
                self._in_script = True
                self.inline_scripts.append("")
        elif tag == "link" and a.get("href"):
            self.assets.append(a["href"] or "")
        elif tag in ("img", "audio", "video", "source") and a.get("src"):
            self.assets.append(a["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_scripts[-1] += data


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def external_urls(text: str) -> list[str]:
    return [u for u in EXTERNAL.findall(text) if u.rstrip("/") not in NAMESPACES]


def directives(csp: str) -> dict[str, list[str]]:
    out = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def script_hash(body: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"


def assert_self_only(csp: str) -> dict[str, list[str]]:
    d = directives(csp)
    assert d["default-src"] == ["'none'"]
    for name, sources in d.items():
        for s in sources:
            assert "://" not in s and s not in ("*", "https:", "http:"), f"{name} allows {s}"
            assert s != "'unsafe-inline'" and s != "'unsafe-eval'", f"{name} allows {s}"
    assert d["frame-ancestors"] == ["'none'"]
    assert d["base-uri"] == ["'none'"]
    assert d["form-action"] == ["'none'"]
    return d


async def fetch_assets(client: httpx.AsyncClient, page_url: str, page: Page) -> dict[str, httpx.Response]:
    """Every file the page references, fetched from the gateway; all must be same-origin and 200."""
    out = {}
    for ref in page.assets:
        url = urljoin(f"http://gateway{page_url}", ref)
        assert urlsplit(url).netloc == "gateway", f"{ref} is not served by the gateway"
        resp = await client.get(urlsplit(url).path)
        assert resp.status_code == 200, (ref, resp.status_code, resp.text[:200])
        out[ref] = resp
    return out


async def test_web_page_is_served_with_a_self_only_policy(client: httpx.AsyncClient) -> None:
    resp = await client.get("/", headers={"Authorization": ""})  # the page itself needs no key
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    csp = assert_self_only(resp.headers["Content-Security-Policy"])
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert set(csp["media-src"]) == {"'self'", "blob:"}  # results play from the blobs the page fetched
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert len(resp.headers["X-Request-ID"]) >= 8

    page = parse(resp.text)
    # The policy forbids inline code: the page must have none, or it would not run.
    assert page.inline_scripts == [] and page.style_attrs == 0 and page.inline_handlers == 0
    assert external_urls(resp.text) == []
    assets = await fetch_assets(client, "/", page)
    kinds = {ref.rsplit(".", 1)[-1]: r.headers["content-type"] for ref, r in assets.items()}
    assert kinds["js"].startswith(("text/javascript", "application/javascript"))
    assert kinds["css"].startswith("text/css")
    for ref, r in assets.items():
        assert external_urls(r.text) == [], f"{ref} names an external URL"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    script = next(r.text for ref, r in assets.items() if ref.endswith(".js"))
    # No EventSource (it cannot send the key): the event stream is read with fetch and resumed with
    # Last-Event-ID; the key lives in the tab's sessionStorage only.
    assert "new EventSource" not in script and "localStorage" not in script
    assert "Last-Event-ID" in script and "sessionStorage" in script and "getReader" in script
    for path in ("v1/synthesize", "/events", "/audio", "/video", "/cancel"):
        assert path in script


async def test_web_page_files_are_not_in_the_openapi_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths
    assert not [p for p in paths if p.startswith(("/static", "/docs"))]
    assert all(p.startswith(("/v1/", "/healthz", "/readyz", "/metrics")) for p in paths), paths


async def test_missing_static_file_is_a_json_404_under_the_api_policy(client: httpx.AsyncClient) -> None:
    for path in ("/static/nope.js", "/static/%2E%2E/main.py", "/docs/static/nope.js"):
        resp = await client.get(path)
        assert resp.status_code == 404, path
        assert resp.json()["error"]["code"]
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_docs_load_every_file_from_the_gateway(client: httpx.AsyncClient) -> None:
    resp = await client.get("/docs")
    assert resp.status_code == 200
    assert external_urls(resp.text) == [], "the /docs page names an external URL (a CDN)"
    page = parse(resp.text)
    assets = await fetch_assets(client, "/docs", page)
    refs = " ".join(assets)
    assert "swagger-ui-bundle.js" in refs and "swagger-ui.css" in refs
    bundle = next(r for ref, r in assets.items() if ref.endswith("swagger-ui-bundle.js"))
    assert len(bundle.content) > 500_000  # Swagger UI itself, not a stub
    # The one inline script (FastAPI's init of Swagger UI) runs by its hash, nothing else inline does.
    csp = assert_self_only(resp.headers["Content-Security-Policy"])
    assert page.inline_scripts and csp["script-src"] == ["'self'"] + [
        script_hash(s) for s in page.inline_scripts
    ]
    assert "/openapi.json" in page.inline_scripts[0]
    redirect = await client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    r_csp = assert_self_only(redirect.headers["Content-Security-Policy"])
    assert r_csp["script-src"] == ["'self'"] + [script_hash(s) for s in parse(redirect.text).inline_scripts]
    # The API's own answers keep the API policy.
    api = await client.get("/healthz")
    assert api.headers["Content-Security-Policy"].startswith("default-src 'none'; frame-ancestors")


async def test_docs_off_serves_neither_docs_nor_their_files_but_the_page_stays(
    settings: Settings, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    settings = settings.model_copy(update={"docs_enabled": False})
    async with make_client(settings) as c:
        for path in ("/docs", "/docs/static/swagger-ui-bundle.js", "/openapi.json", "/docs/oauth2-redirect"):
            assert (await c.get(path)).status_code == 404, path
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/static/app.js")).status_code == 200
