"""``/docs`` served from the ``swagger-ui-bundle-v2`` package: no CDN, so it works offline.

FastAPI's default ``/docs`` page loads Swagger UI's script and styles from a public CDN (and its
favicon from fastapi.tiangolo.com), so on an offline or air-gapped machine the page stays blank.
Here the app is built with ``docs_url=None, redoc_url=None`` and this module serves the same page
with every asset from the package's folder (import name ``swagger_ui_bundle``), mounted at
``/docs/static``: the page refers to no other host, and the online validator badge is off. The
package is the maintained fork of ``swagger-ui-bundle`` (same maintainers, same import): its Swagger
UI 5 reads the OpenAPI 3.1 document FastAPI writes, which ``swagger-ui-bundle`` 1.1.0's Swagger UI
4.15 refuses ("Unable to render this definition"). ReDoc is not served (``/redoc`` is 404): no
package in the lock ships its bundle, and FastAPI's ``/redoc`` needs a CDN and Google Fonts;
``/docs`` and ``/openapi.json`` cover it. All of it stays open without the API key (the guard covers
only ``/v1/`` and ``/v2/``).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

DOCS_URL = "/docs"
STATIC_URL = "/docs/static"  # the package's files, as shipped
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"  # what FastAPI's own /docs offers, kept for OAuth2 clients


def assets_path() -> str:
    """The folder of Swagger UI's files inside the installed ``swagger-ui-bundle`` package."""
    from swagger_ui_bundle import swagger_ui_path

    return str(swagger_ui_path)


def install(app: FastAPI) -> None:
    """Serve ``/docs`` (and its assets, and the OAuth2 redirect page) from the package on ``app``.

    ``app`` must have been made with ``docs_url=None`` (and ``redoc_url=None``), so that FastAPI's CDN
    page is not registered first.
    """
    app.mount(STATIC_URL, StaticFiles(directory=assets_path()), name="swagger-ui")

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon-32x32.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            # validatorUrl None: Swagger UI would otherwise send the document to validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        )

    async def oauth2_redirect(_: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_route(DOCS_URL, docs, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT_URL, oauth2_redirect, include_in_schema=False)
