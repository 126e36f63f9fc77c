"""Errors as ``{"error", "field"?, "detail"?}`` bodies, and the ASGI guard: bearer key, body-size limit."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import Match

PROTECTED = ("/v1/", "/v2/")  # the API paths behind the key; /health and /docs stay open


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


def error_body(message: str, field: str | None = None, detail: list | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    if detail is not None:
        body["detail"] = detail
    return body


def _field_name(loc: tuple | list) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_response(error: RequestValidationError) -> JSONResponse:
    detail = []
    for e in error.errors():
        if e.get("type") == "json_invalid":
            name = "body"
            msg = f"body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})"
        else:
            name = _field_name(e.get("loc", ()))
            msg = str(e.get("msg"))
        detail.append({"field": name, "msg": msg, "type": str(e.get("type"))})
    message = "; ".join(f"{d['field']}: {d['msg']}" for d in detail) or "invalid request"
    first = detail[0]["field"] if detail else None
    return JSONResponse(status_code=422, content=error_body(f"invalid request: {message}", first, detail))


class GuardMiddleware:
    """Pure ASGI guard: bearer key on /v1/* and /v2/*, then the body size limit (before any JSON parsing).

    A method that an endpoint does not serve (``GET /v1/compare``) skips the key: the app answers 405 with
    ``Allow``, key or not, as it does for any path (given ``router``, the app's, to tell).
    """

    def __init__(self, app, api_key: str | None, max_request_bytes: int, router=None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.limit = max_request_bytes
        self.router = router

    def _wrong_method(self, scope) -> bool:
        """The path is an endpoint's but the method is not one it serves (the router answers 405)."""
        matches = [route.matches(scope)[0] for route in getattr(self.router, "routes", ())]
        return Match.FULL not in matches and Match.PARTIAL in matches

    async def _reply(self, scope, send, status: int, message: str, headers: list | None = None) -> None:
        response = JSONResponse(status_code=status, content=error_body(message), headers=dict(headers or []))
        await response(scope, None, send)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and scope["path"].startswith(PROTECTED) and not self._wrong_method(scope):
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.api_key):
                reason = "missing" if not auth else "wrong"
                return await self._reply(scope, send, 401, f"{reason} API key: send 'Authorization: Bearer KEY'",
                                         [("WWW-Authenticate", "Bearer")])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                return await self._reply(scope, send, 400, "invalid Content-Length header")
            if too_big:
                await self._drain(receive)
                return await self._reply(scope, send, 413, f"request body over the {self.limit}-byte limit")
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # Read the body ourselves (it may be chunked, without Content-Length) and replay it.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                # Drain only a body that is still coming: after the last message, receive() waits
                # for a disconnect, while the client waits for this 413 (a deadlock on a busy server,
                # which receives the chunks coalesced so the crossing message is the last one).
                if message.get("more_body", False):
                    await self._drain(receive)
                return await self._reply(scope, send, 413, f"request body over the {self.limit}-byte limit")
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _drain(self, receive, cap: int = 64 * 2**20) -> None:
        """Consume (and drop) a rejected body so the client sees the 413 instead of a reset; bounded."""
        seen = 0
        while seen < cap:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
