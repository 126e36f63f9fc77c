"""The served ``/openapi.json``, made true to this server (``tests/test_api_fuzz.py`` holds it to that).

Every error answer is tinyrm's ``ErrorBody`` (``{"error", "field"?, "detail"?}``), FastAPI's
``HTTPValidationError`` is gone; each POST endpoint lists the statuses it answers with (400, 413, 415, 422, 503,
and 401 with the bearer scheme when a key is set); the configured list limits are ``maxItems`` (longer lists
get 422 from ``check_list_limit``, which reads the same table), the body limit is in the request body's
description (413 beyond); and only the endpoints the loaded model serves are listed: ``/v1/score_steps`` needs
a process or outcome model (on a pairwise one it answers 400 and is left out of the document).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from .guard import PROTECTED, ApiError
from .schemas import CompareBatchRequest, ErrorBody, RankRequest, RerankRequest, ScoreStepsRequest

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}

# The error statuses of every POST endpoint (FastAPI's own 422 is left out once 422 is listed here).
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed request (an invalid Content-Length header)"},
    413: {"model": ErrorBody, "description": "request body over the server's max_request_bytes"},
    415: {"model": ErrorBody, "description": "a body sent without Content-Type application/json (or a +json type): "
                                             "`field` is body"},
    422: {"model": ErrorBody, "description": "invalid request: `field` names the first offending field and "
                                             "`detail` lists every error; also lists over the server's limits, a body "
                                             "that is not UTF-8, X-Request-Timeout sent more than once"},
    503: {"model": ErrorBody, "description": "the model could not answer now: the server is overloaded (pairs "
                                             "accepted past max_queued_pairs), the request passed its deadline "
                                             "(--request-timeout or X-Request-Timeout), or the server is stopping; "
                                             "retry after Retry-After seconds"},
}

# (request body, list field, ServeConfig limit): enforced by check_list_limit, the schema's maxItems.
LIST_LIMITS = ((CompareBatchRequest, "items", "max_items"), (RankRequest, "candidates", "max_candidates"),
               (RerankRequest, "documents", "max_documents"), (ScoreStepsRequest, "steps", "max_items"))


def check_list_limit(req: Any, config) -> None:
    """A 422 naming the field when ``req``'s list is longer than the server's limit for it (LIST_LIMITS)."""
    for body, field, limit in LIST_LIMITS:
        if isinstance(req, body):
            n, most = len(getattr(req, field)), getattr(config, limit)
            if n > most:
                raise ApiError(422, f"too many {field}: {n} > {most}", field)
            # A round robin submits all its pairs at once: past the queue bound it would be refused (503) for ever.
            pairs = n * (n - 1) // 2
            robin = isinstance(req, RerankRequest) or (isinstance(req, RankRequest) and req.method == "round_robin")
            if robin and pairs > config.max_queued_pairs:
                raise ApiError(422, f"too many {field} for a round robin here: {n} need {pairs} pairs at once, over "
                                    f"this server's --max-queued-pairs {config.max_queued_pairs}", field)


def endpoints(serves_steps: bool) -> str:
    """The app's description: which endpoints this server's model serves."""
    served = "compare, batch compare, best-of-n ranking, rerank"
    if serves_steps:
        return f"Process or outcome reward model: step scores (/v1/score_steps), {served}."
    return (f"Pairwise reward model: {served}. /v1/score_steps needs a process or outcome model: here it "
            "answers 400 and is not listed.")


def install(app: FastAPI, config, serves_steps: bool) -> None:
    """Wrap ``app.openapi`` to add what depends on ``config``: the limits, the bearer key."""
    build = app.openapi
    app.description = endpoints(serves_steps)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for body, field, limit in LIST_LIMITS:
            if body.__name__ in schemas:
                schemas[body.__name__]["properties"][field]["maxItems"] = getattr(config, limit)
        if config.api_key:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, item in schema["paths"].items():
            for operation in item.values():
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "X-Request-Timeout":  # optional, but never null: a number or absent
                        parameter["schema"] = {"type": "number", "exclusiveMinimum": 0,
                                               "title": parameter["schema"].get("title", "X-Request-Timeout")}
                if "503" in operation.get("responses", {}):
                    operation["responses"]["503"]["headers"] = {"Retry-After": {
                        "description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 1}}}
                if "requestBody" in operation:
                    operation["requestBody"]["description"] = (
                        f"JSON, at most {config.max_request_bytes} bytes (413 beyond)")
                if config.api_key and path.startswith(PROTECTED):
                    operation["security"] = [{"bearer": []}]
                    operation["responses"]["401"] = {
                        "description": "missing or wrong API key: send 'Authorization: Bearer KEY'",
                        "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
                        "content": {"application/json": {"schema": ERROR_REF}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
