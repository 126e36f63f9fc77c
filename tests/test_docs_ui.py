"""``/docs`` works offline: Swagger UI served from the swagger-ui-bundle-v2 package, no other host.

A real uvicorn server on loopback (``serving_app``) around a stand-in scorer (the page does not need
a model). One test reads the page and every asset it names; one renders it in headless Chromium with
every host but 127.0.0.1 unresolvable, as on an offline machine, and reads the operations off the DOM.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tinyrm.serving.app import ServeConfig, create_app

from .test_serve import serving_app

KEY = "docs-test-key"
OPERATIONS = {"/v1/compare", "/v1/compare_batch", "/v1/rank", "/v1/rerank", "/v2/rerank", "/health"}


class StandInScorer:
    """Enough of a model for ``create_app``; /docs never scores."""

    name = "stand-in"

    def compare_batch(self, items, batch_size=None, both_orders=None) -> list[float]:
        return [0.5] * len(items)


@pytest.fixture(scope="module")
def server():
    with serving_app(create_app(StandInScorer(), ServeConfig(api_key=KEY))) as (url, _):
        yield url


class References(HTMLParser):
    """Every ``src`` / ``href`` attribute, and the text of inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.attributes: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs) -> None:
        self.attributes += [value for name, value in attrs if name in ("src", "href") and value]
        self._in_script = tag == "script"

    def handle_endtag(self, tag) -> None:
        self._in_script = False

    def handle_data(self, data) -> None:
        if self._in_script:
            self.scripts.append(data)


def references(html: str) -> tuple[list[str], list[str]]:
    """(src / href values, string literals of inline scripts that look like a URL or a path)."""
    parser = References()
    parser.feed(html)
    literals = [m.group(2) for script in parser.scripts for m in re.finditer(r"(['\"])(.*?)\1", script)]
    return parser.attributes, [s for s in literals if s.startswith("/") or "://" in s]


def same_origin(base: str, ref: str) -> bool:
    target = urlsplit(urljoin(base, ref))
    return target.scheme == "data" or (target.scheme, target.netloc) == tuple(urlsplit(base)[:2])


EXPECTED_TYPE = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


def test_docs_refers_to_no_other_host_and_every_asset_is_served(server):
    with httpx.Client(base_url=server, timeout=30) as http:  # no key: /docs and its assets stay open
        page = http.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        # Nothing that names a host at all (http://, https://, protocol-relative //host), anywhere.
        assert re.findall(r"(?:\b[a-z][a-z0-9+.-]*:)?//[\w.-]+", html) == []
        attributes, literals = references(html)
        assert any(a.endswith("swagger-ui-bundle.js") for a in attributes)
        assert any(a.endswith("swagger-ui.css") for a in attributes)
        assert "/openapi.json" in literals and "/docs/oauth2-redirect" in literals
        for ref in attributes + literals:
            assert same_origin(server + "/docs", ref), ref
            answer = http.get(urljoin(server + "/docs", ref))
            assert answer.status_code == 200, ref
            suffix = re.search(r"\.\w+$", urlsplit(ref).path)
            expected = EXPECTED_TYPE.get(suffix.group(0) if suffix else "", "text/html")
            assert expected in answer.headers["content-type"], (ref, answer.headers["content-type"])
            if ref.endswith(".css"):  # the stylesheet's own url(...)s: inline data only
                for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", answer.text):
                    assert same_origin(server + ref, url), url
        # The OAuth2 redirect page FastAPI's own /docs offers is kept, with no other host either.
        redirect = http.get("/docs/oauth2-redirect").text
        assert "swaggerUIRedirectOauth2" in redirect and re.findall(r"https?://", redirect) == []


def test_redoc_is_not_served(server):
    # FastAPI's /redoc needs a CDN and Google Fonts, and no package in the lock ships ReDoc.
    assert httpx.get(server + "/redoc", timeout=30).status_code == 404


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_docs_renders_offline_in_headless_chromium(server, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on PATH: `apt-get install chromium` (Debian's package; .ci/run installs it) "
                    "to render /docs in a headless browser")
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
        # Offline, as on an air-gapped machine: every host but the server's fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--virtual-time-budget=10000", "--dump-dom", server + "/docs",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    dom = run.stdout
    assert run.returncode == 0 and "swagger-ui" in dom, run.stderr[-2000:]
    assert "Unable to render this definition" not in dom
    # Swagger UI renders one block per operation, its path in data-path.
    listed = set(re.findall(r'data-path="([^"]+)"', dom))
    assert OPERATIONS <= listed, (sorted(listed), dom[-3000:])
    assert "tinyrm scoring service" in dom  # the document's title, shown by the rendered info block
    for ref in re.findall(r'\ssrc="([^"]+)"', dom):  # nothing the page loaded came from elsewhere
        assert same_origin(server + "/docs", ref), ref
