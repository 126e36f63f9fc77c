"""Errors as ``{"error", "field"?, "detail"?}`` bodies, and the ASGI guard: bearer key, body-size limit, and a
body an endpoint can read as JSON (its Content-Type, UTF-8) with one ``X-Request-Timeout`` at most."""

from __future__ import annotations

import email.message
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


def json_refusal(headers: list, body: bytes) -> tuple[int, str, str] | None:
    """(status, message, field) for a request to an endpoint that it cannot read as meant, else None: a body that
    FastAPI would not parse as JSON for its Content-Type (415: it would answer "Input should be a valid dictionary"
    for a JSON object sent with curl's default form type), one that is not UTF-8 (FastAPI: a bare 400), or
    ``X-Request-Timeout`` sent more than once (FastAPI reads the first, silently)."""
    if body:
        raw = next((v for k, v in headers if k == b"content-type"), b"").decode("latin-1")
        parsed = email.message.Message()
        parsed["content-type"] = raw
        subtype = parsed.get_content_subtype()
        if not raw or parsed.get_content_maintype() != "application" or not (
                subtype == "json" or subtype.endswith("+json")):  # FastAPI's own test of a JSON body
            return 415, f"Content-Type must be application/json, got {raw[:100] or 'none'}", "body"
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            return 422, f"body is not UTF-8 text (byte {error.start}: 0x{body[error.start]:02x})", "body"
    timeouts = sum(1 for k, _ in headers if k == b"x-request-timeout")
    if timeouts > 1:
        # the field as a bad value of it is named (validation_response)
        return 422, f"X-Request-Timeout given {timeouts} times: send it once", "header.X-Request-Timeout"
    return None


class GuardMiddleware:
    """Pure ASGI guard: bearer key on /v1/* and /v2/*, then the body size limit (before any JSON parsing), then
    what ``json_refusal`` refuses on a request to an endpoint.

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

    def _routed(self, scope) -> bool:
        """An endpoint serves this path and method (others get the router's 404 or 405 as they are)."""
        return any(route.matches(scope)[0] == Match.FULL for route in getattr(self.router, "routes", ()))

    async def _reply(self, scope, send, status: int, message: str, headers: list | None = None,
                     field: str | None = None) -> None:
        response = JSONResponse(status_code=status, content=error_body(message, field), headers=dict(headers or []))
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
        if scope["path"].startswith(PROTECTED) and self._routed(scope):
            refusal = json_refusal(scope.get("headers") or [], body)
            if refusal is not None:
                status, message, field = refusal
                return await self._reply(scope, send, status, message, field=field)
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
