"""HTTP scoring service: FastAPI app with micro-batching, run by uvicorn.

Concurrent requests are queued and merged into one ``compare_batch`` call (up to
``max_batch_size`` pairs, or whatever arrived within ``max_wait_ms`` of the oldest request). The
model runs in one dedicated worker thread, so the event loop keeps answering ``/health`` while a
batch is being scored, and two batches never share the model at once. Ranking requests run their
tournament in a thread whose comparisons go through the same batcher, so they merge with
everyone else's traffic.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .rank import rank_candidates

logger = logging.getLogger(__name__)

STEP_OBJECTIVES = ("process", "outcome")  # checkpoints trained to score solution steps


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer KEY"
    max_batch_size: int = 64  # pairs merged into one compare_batch call
    max_wait_ms: float = 5.0  # how long the oldest queued request may wait for company
    max_request_bytes: int = 1_000_000  # larger bodies get 413
    max_candidates: int = 64  # /v1/rank candidates limit (422 beyond)
    max_items: int = 4096  # /v1/compare_batch items limit (422 beyond)
    request_timeout_s: float = 300.0  # a ranking thread gives up waiting on the batcher after this
    forward_batch_size: int | None = None  # rows per forward pass (None: 8 on CPU, 2 x max_batch_size on GPU)
    threads: int | None = None  # torch intra-op threads (None = torch default); 1 suits a shared CPU
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_request_bytes", "max_candidates", "max_items", "forward_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


# ---------------------------------------------------------------------------- micro-batching
@dataclass
class _Pending:
    items: list[tuple[str, str, str]]
    both_orders: bool | None
    future: asyncio.Future
    arrived: float


@dataclass
class BatchStats:
    """Counters exposed in /health so batching can be observed (and tested)."""

    batches: int = 0
    requests: int = 0
    pairs: int = 0
    max_batch_requests: int = 0
    max_batch_pairs: int = 0
    requests_per_batch: Counter = field(default_factory=Counter)
    busy_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches, "requests": self.requests, "pairs": self.pairs,
            "max_batch_requests": self.max_batch_requests, "max_batch_pairs": self.max_batch_pairs,
            "requests_per_batch": {str(k): v for k, v in sorted(self.requests_per_batch.items())},
            "busy_seconds": round(self.busy_seconds, 3),
        }


def default_forward_batch(rm, max_batch_size: int) -> int:
    """Rows per forward pass: the whole micro-batch (both orders) on a GPU; 8 on a CPU, where wide
    padded batches were measured slower than small length-sorted ones (docs/ranking-and-serving.md, load benchmark)."""
    device = getattr(rm, "device", None)
    if getattr(device, "type", "cpu") == "cpu":
        return 8
    return 2 * max_batch_size


class MicroBatcher:
    """Merges queued ``compare_batch`` requests and runs them on a single model thread."""

    def __init__(self, rm, max_batch_size: int, max_wait_ms: float, forward_batch_size: int | None = None) -> None:
        self.rm = rm
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.forward_batch_size = forward_batch_size or default_forward_batch(rm, max_batch_size)
        # Requests that leave both_orders to the model share batches with those that spell it out.
        self.default_both_orders = getattr(getattr(rm, "config", None), "both_orders", None)
        self.stats = BatchStats()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinyrm-model")
        self._pending: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.busy = False

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="tinyrm-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for entry in self._pending:
            if not entry.future.done():
                entry.future.set_exception(RuntimeError("server is shutting down"))
        self._pending.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def submit(self, items: list[tuple[str, str, str]], both_orders: bool | None = None) -> list[float]:
        if not items:
            return []
        assert self.loop is not None and self._wakeup is not None, "batcher not started"
        if both_orders is None:
            both_orders = self.default_both_orders
        future = self.loop.create_future()
        self._pending.append(_Pending(items, both_orders, future, self.loop.time()))
        self._wakeup.set()
        return await future

    async def run_model(self, fn: Callable, *args, **kwargs):
        """Run any model call on the model thread (never concurrently with a batch)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def _queued_pairs(self, key: bool | None) -> int:
        return sum(len(e.items) for e in self._pending if e.both_orders == key)

    def _take_batch(self) -> list[_Pending]:
        """The oldest request plus later ones with the same ``both_orders`` that still fit, in order."""
        first = self._pending.popleft()
        batch, size, kept = [first], len(first.items), deque()
        while self._pending:
            entry = self._pending.popleft()
            if entry.both_orders == first.both_orders and size + len(entry.items) <= self.max_batch_size:
                batch.append(entry)
                size += len(entry.items)
            else:
                kept.append(entry)
        self._pending = kept
        return [e for e in batch if not e.future.done()]  # drop requests whose client went away

    async def _run(self) -> None:
        assert self._wakeup is not None and self.loop is not None
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            first = self._pending[0]
            # Wait for company until the batch is full or the oldest request has waited max_wait.
            while self._queued_pairs(first.both_orders) < self.max_batch_size:
                remaining = first.arrived + self.max_wait - self.loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:  # noqa: UP041 - distinct from TimeoutError on 3.10
                    break
            try:
                batch = self._take_batch()
                if batch:
                    await self._score(batch)
            except Exception:  # the batcher must outlive any single bad batch
                logger.exception("batcher iteration failed")

    async def _score(self, batch: list[_Pending]) -> None:
        items = [item for entry in batch for item in entry.items]
        both = batch[0].both_orders
        rows = self.forward_batch_size
        started = time.perf_counter()
        self.busy = True
        try:
            probs = await self.loop.run_in_executor(
                self.executor, lambda: self.rm.compare_batch(items, batch_size=rows, both_orders=both)
            )
        except Exception as error:  # a failing batch fails its requests, never the server
            logger.exception("batch of %d pairs failed", len(items))
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(error)
            return
        finally:
            self.busy = False
            self.stats.busy_seconds += time.perf_counter() - started
        s = self.stats
        s.batches += 1
        s.requests += len(batch)
        s.pairs += len(items)
        s.max_batch_requests = max(s.max_batch_requests, len(batch))
        s.max_batch_pairs = max(s.max_batch_pairs, len(items))
        s.requests_per_batch[len(batch)] += 1
        start = 0
        for entry in batch:
            chunk = [float(p) for p in probs[start : start + len(entry.items)]]
            start += len(entry.items)
            if not entry.future.done():
                entry.future.set_result(chunk)


class BatchedScorer:
    """A scorer for ``tinyrm.rank`` running in a worker thread: its comparisons go through the batcher."""

    def __init__(self, batcher: MicroBatcher, timeout_s: float) -> None:
        self.batcher = batcher
        self.timeout_s = timeout_s

    def compare_batch(self, items, batch_size: int = 32, both_orders: bool | None = None) -> list[float]:
        assert self.batcher.loop is not None
        future = asyncio.run_coroutine_threadsafe(self.batcher.submit(list(items), both_orders), self.batcher.loop)
        return future.result(timeout=self.timeout_s)


# ---------------------------------------------------------------------------- request schemas
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompareRequest(_Strict):
    prompt: str
    a: str
    b: str
    both_orders: bool | None = Field(None, description="average both presentation orders (default: the model's)")


class CompareResponse(BaseModel):
    prob_a: float = Field(description="P(a is better than b)")


class CompareItem(_Strict):
    prompt: str
    a: str
    b: str


class CompareBatchRequest(_Strict):
    items: list[CompareItem]
    both_orders: bool | None = None


class CompareBatchResponse(BaseModel):
    prob_a: list[float]


class RankRequest(_Strict):
    prompt: str
    candidates: list[str] = Field(min_length=1)
    method: Literal["knockout", "round_robin"] = "knockout"


class RankResponse(BaseModel):
    ranking: list[int] = Field(description="candidate indices, best first")
    scores: list[float] = Field(description="scores[i] is the score of candidates[i]")


class ScoreStepsRequest(_Strict):
    problem: str
    steps: list[str] = Field(min_length=1)
    aggregate: str | None = Field(None, description="how step scores combine into the reward (model default)")


class ScoreStepsResponse(BaseModel):
    scores: list[float]
    reward: float


# ---------------------------------------------------------------------------- errors and guards
class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


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
    """Pure ASGI guard: bearer key on /v1/*, then the body size limit (before any JSON parsing)."""

    def __init__(self, app, api_key: str | None, max_request_bytes: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.limit = max_request_bytes

    async def _reply(self, scope, send, status: int, message: str, headers: list | None = None) -> None:
        response = JSONResponse(status_code=status, content=error_body(message), headers=dict(headers or []))
        await response(scope, None, send)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and scope["path"].startswith("/v1/"):
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


# ---------------------------------------------------------------------------- the app
def create_app(rm, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app around a loaded model (``RewardModel`` or anything with ``compare_batch``)."""
    config = config or ServeConfig()
    batcher = MicroBatcher(rm, config.max_batch_size, config.max_wait_ms, config.forward_batch_size)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="tinyrm scoring service",
        description="Pairwise reward model: compare, batch compare, best-of-n ranking, step scores.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.config = config
    app.add_middleware(GuardMiddleware, api_key=config.api_key, max_request_bytes=config.max_request_bytes)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, error: RequestValidationError) -> JSONResponse:
        return validation_response(error)

    @app.exception_handler(ApiError)
    async def _on_api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(status_code=error.status, content=error_body(error.message, error.field))

    @app.exception_handler(Exception)
    async def _on_error(_: Request, error: Exception) -> JSONResponse:
        logger.exception("request failed")
        return JSONResponse(status_code=500, content=error_body(f"internal error: {type(error).__name__}: {error}"))

    async def scored(coro):
        try:
            return await coro
        except ValueError as error:  # bad input that only the model can see (e.g. an unknown aggregate)
            raise ApiError(422, str(error)) from error
        except RuntimeError as error:
            raise ApiError(503, str(error)) from error

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": getattr(rm, "name", type(rm).__name__),
            "objective": getattr(getattr(rm, "config", None), "objective", None),
            "device": str(getattr(rm, "device", "cpu")),
            "uptime_s": round(time.time() - started, 3),
            "busy": batcher.busy,
            "queued": batcher.queued,
            "limits": {"max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms,
                       "forward_batch_size": batcher.forward_batch_size,
                       "max_request_bytes": config.max_request_bytes, "max_candidates": config.max_candidates,
                       "max_items": config.max_items},
            "batching": batcher.stats.as_dict(),
        }

    @app.post("/v1/compare", response_model=CompareResponse)
    async def compare(req: CompareRequest) -> CompareResponse:
        probs = await scored(batcher.submit([(req.prompt, req.a, req.b)], req.both_orders))
        return CompareResponse(prob_a=probs[0])

    @app.post("/v1/compare_batch", response_model=CompareBatchResponse)
    async def compare_batch(req: CompareBatchRequest) -> CompareBatchResponse:
        if len(req.items) > config.max_items:
            raise ApiError(422, f"too many items: {len(req.items)} > {config.max_items}", "items")
        items = [(i.prompt, i.a, i.b) for i in req.items]
        return CompareBatchResponse(prob_a=await scored(batcher.submit(items, req.both_orders)))

    @app.post("/v1/rank", response_model=RankResponse)
    async def rank(req: RankRequest) -> RankResponse:
        if len(req.candidates) > config.max_candidates:
            raise ApiError(422, f"too many candidates: {len(req.candidates)} > {config.max_candidates}", "candidates")
        scorer = BatchedScorer(batcher, config.request_timeout_s)
        result = await scored(asyncio.to_thread(
            rank_candidates, scorer, req.prompt, req.candidates, req.method, 2 * config.max_batch_size
        ))
        return RankResponse(ranking=result.ranking, scores=result.scores)

    @app.post("/v1/score_steps", response_model=ScoreStepsResponse)
    async def score_steps(req: ScoreStepsRequest) -> ScoreStepsResponse:
        # Every RewardModel has score_steps, but only a process/outcome checkpoint was trained for it:
        # a pairwise model would answer with an untrained prompt, so say so instead.
        objective = getattr(getattr(rm, "config", None), "objective", None)
        has_methods = callable(getattr(rm, "score_steps", None)) and callable(getattr(rm, "score_solution", None))
        if not has_methods or objective not in STEP_OBJECTIVES:
            raise ApiError(400, f"the loaded model (objective {objective!r}) does not score steps; serve a process "
                                "or outcome reward model (tinyrm train --objective process)")
        if req.aggregate is not None:
            from .aggregate import METHODS as AGGREGATES

            if req.aggregate not in AGGREGATES:
                raise ApiError(422, f"unknown aggregate {req.aggregate!r}; choose from {', '.join(AGGREGATES)}",
                               "aggregate")

        def work() -> tuple[list[float], float]:
            scores = rm.score_steps(req.problem, req.steps)
            kw = {"aggregate": req.aggregate} if req.aggregate is not None else {}
            return [float(s) for s in scores], float(rm.score_solution(req.problem, req.steps, **kw))

        scores, reward = await scored(batcher.run_model(work))
        return ScoreStepsResponse(scores=scores, reward=reward)

    return app


def serve(rm, config: ServeConfig) -> None:
    """Run the app with uvicorn until interrupted."""
    import torch
    import uvicorn

    if config.threads:
        torch.set_num_threads(config.threads)
    uvicorn.run(create_app(rm, config), host=config.host, port=config.port, log_level=config.log_level,
                timeout_keep_alive=5)
