"""HTTP scoring service: FastAPI app with micro-batching, run by uvicorn.

Concurrent requests are queued and merged into one ``compare_batch`` call (up to
``max_batch_size`` pairs, or whatever arrived within ``max_wait_ms`` of the oldest request). The
model runs in one dedicated worker thread, so the event loop keeps answering ``/health`` while a
batch is being scored, and two batches never share the model at once. Ranking requests run their
tournament in a thread whose comparisons go through the same batcher, so they merge with
everyone else's traffic (a baseline's ranking sends its responses' rewards through it instead).
``/v1/rerank`` (and ``/v2/rerank``, the same body) is the rerank API of Cohere-, Jina- and vLLM-style
clients (``rerank.py``). ``/openapi.json`` describes this server as it is, error bodies, limits and key
included (``openapi.py``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..pairwise.rank import rank_candidates
from ..process.aggregate import METHODS as AGGREGATES
from ..process.prompt import OBJECTIVES as STEP_OBJECTIVES  # checkpoints trained to score solution steps
from ..process.scoring import encode_many, solution_reward
from ..temperature import model_temperature
from .batching import MicroBatcher
from .docs_ui import install as install_docs_ui
from .guard import ApiError, GuardMiddleware, error_body, validation_response
from .metrics import metrics_text
from .openapi import ERRORS, check_list_limit
from .openapi import install as install_openapi
from .rerank import BatchedScorer, batched_scorer
from .rerank import rerank as rerank_documents
from .schemas import (
    CompareBatchRequest,
    CompareBatchResponse,
    CompareRequest,
    CompareResponse,
    RankRequest,
    RankResponse,
    RerankRequest,
    RerankResponse,
    ScoreStepsRequest,
    ScoreStepsResponse,
)

logger = logging.getLogger(__name__)


ENGINES = ("local", "ray")  # tinyrm serve --engine
# How long past its deadline a rank/rerank tournament may take to answer for itself (the batcher's 503) before the
# endpoint answers instead: the tournament may still be waiting for a worker thread.
TOURNAMENT_GRACE_S = 0.5


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # when set, /v1/* and /v2/* need "Authorization: Bearer KEY"
    # Pairs (or step units) merged into one forward call; None: 16 on a CPU, 64 on a GPU (batching.default_max_batch).
    max_batch_size: int | None = None
    max_wait_ms: float = 5.0  # how long the oldest queued request may wait for company
    max_request_bytes: int = 1_000_000  # larger bodies get 413
    max_candidates: int = 64  # /v1/rank candidates limit (422 beyond)
    max_items: int = 4096  # /v1/compare_batch items limit (422 beyond)
    max_documents: int = 32  # /v1/rerank, /v2/rerank documents limit (422 beyond): n(n - 1) sequences each
    # Each scoring request's deadline (a client may ask for less: X-Request-Timeout); past it, 503 + Retry-After
    # and its remaining slices are dropped. Sized with max_queued_pairs from measured rates: all the work the
    # server accepts (6,144 pairs) takes ~460 s at the 13.4 pairs/s of the default model on 2 CPU cores (one
    # torch thread), ~25 s at a GPU's 250 (docs/ranking-and-serving.md, "Under load").
    request_timeout_s: float = 600.0
    # Pairs accepted and not yet answered (in flight or waiting); a request that would pass it gets 503 at once.
    # A maximum request (max_items) plus 2,048 pairs of everyone else's.
    max_queued_pairs: int = 6144
    # Pairs of one request per slice (a forward call takes slices round-robin); None: a quarter of max_batch_size.
    slice_pairs: int | None = None
    forward_batch_size: int | None = None  # rows per forward pass (None: 8 on CPU, 2 x max_batch_size on GPU)
    threads: int | None = None  # torch intra-op threads (None = torch default); 1 suits a shared CPU
    log_level: str = "info"
    # On SIGTERM/SIGINT: accepted requests get this long to finish, then are cancelled and the process
    # exits (a stalled client would otherwise hold the shutdown for ever); docs/reliability.md.
    graceful_timeout_s: float = 20.0
    # --engine ray: the same app as Ray Serve replicas behind one address (serving/ray_serve.py).
    engine: str = "local"  # local (uvicorn, this process) | ray
    replicas: int = 1  # Ray Serve replicas, one model each
    gpus_per_replica: float = 0  # Ray's num_gpus per replica (0: CPU replicas)
    ray_address: str | None = None  # an existing cluster (None: start a local Ray, or $RAY_ADDRESS)
    # False (--no-calibration): the model's raw probabilities even where `tinyrm calibrate` saved a temperature.
    calibrated: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_request_bytes", "max_candidates", "max_items", "max_documents",
                     "forward_batch_size", "max_queued_pairs", "slice_pairs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # Finite: an infinite wait for company would hold every lone request until its deadline (and the shutdown).
        if not (self.max_wait_ms >= 0 and math.isfinite(self.max_wait_ms)):
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {self.max_wait_ms}")
        if not self.graceful_timeout_s > 0:  # nan too
            raise ValueError(f"graceful_timeout_s must be > 0, got {self.graceful_timeout_s}")
        if not (self.request_timeout_s > 0 and math.isfinite(self.request_timeout_s)):
            raise ValueError(f"request_timeout_s must be a finite number > 0, got {self.request_timeout_s}")
        if not 0 <= self.port <= 65535:  # checked here, before a model loads and uvicorn fails to bind
            raise ValueError(f"port must be in 0..65535 (0: any free port), got {self.port}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.max_queued_pairs < self.max_items:
            raise ValueError(f"max_queued_pairs ({self.max_queued_pairs}) must be >= max_items ({self.max_items}): "
                             "a request of the largest allowed size would always be refused")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.gpus_per_replica < 0:
            raise ValueError(f"gpus_per_replica must be >= 0, got {self.gpus_per_replica}")
        if self.engine == "local" and (self.replicas != 1 or self.gpus_per_replica or self.ray_address):
            raise ValueError("replicas, gpus_per_replica and ray_address need engine 'ray' (--engine ray)")


# Optional header of the scoring endpoints: a deadline shorter than the server's --request-timeout.
RequestTimeout = Annotated[float | None, Header(
    alias="X-Request-Timeout", gt=0, allow_inf_nan=False,
    description="seconds this request may take (at most the server's --request-timeout; more is capped): past "
                "it the answer is 503 with Retry-After and the request's remaining work is dropped")]


async def until_disconnected(coro, request: Request | None, on_disconnect=None):
    """Await ``coro``; if the client goes away first, cancel it (the batcher drops its remaining slices),
    call ``on_disconnect`` and answer 503 (nobody reads it). The body was read before the endpoint ran, so
    the next ASGI message is ``http.disconnect`` (or never comes)."""
    task = asyncio.ensure_future(coro)
    if request is None:
        return await task

    async def gone() -> None:
        message = await request.receive()
        if message.get("type") != "http.disconnect":  # a host that sends more: stop watching, never fire
            await asyncio.Event().wait()

    watcher = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    if on_disconnect is not None:
        on_disconnect()
    raise ApiError(503, "the client went away; the request's remaining work was dropped")


def serves_steps(rm) -> bool:
    """Only a process/outcome checkpoint was trained for step verdicts (a ProcessRewardModel made from a
    pairwise one would answer with an untrained prompt): anything else gets 400 on /v1/score_steps."""
    objective = getattr(getattr(rm, "config", None), "objective", None)
    has_methods = all(callable(getattr(rm, name, None)) for name in ("score_steps", "score_solution", "verdicts"))
    return has_methods and objective in STEP_OBJECTIVES


def create_app(rm, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app around a loaded model (``RewardModel`` or anything with ``compare_batch``)."""
    config = config or ServeConfig()
    if not config.calibrated:  # every endpoint then gives raw probabilities (tinyrm.temperature)
        rm.calibrated = False
    batcher = MicroBatcher(rm, config.max_batch_size, config.max_wait_ms, config.forward_batch_size,
                           slice_pairs=config.slice_pairs, max_queued_pairs=config.max_queued_pairs,
                           timeout_s=config.request_timeout_s)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    # docs_url / redoc_url None: FastAPI's pages load from a CDN; docs_ui serves /docs from a package instead
    app = FastAPI(title="tinyrm scoring service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.state.config = config
    steps_served = serves_steps(rm)
    install_openapi(app, config, steps_served)  # /openapi.json: error bodies, statuses, limits, the key
    install_docs_ui(app)  # /docs with Swagger UI from the swagger-ui-bundle-v2 package: works offline
    app.add_middleware(GuardMiddleware, api_key=config.api_key, max_request_bytes=config.max_request_bytes,
                       router=app.router)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, error: RequestValidationError) -> JSONResponse:
        return validation_response(error)

    @app.exception_handler(HTTPException)  # 404, 405 (with its Allow header): the same error body
    async def _on_http_error(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(status_code=error.status_code, content=error_body(str(error.detail)),
                            headers=error.headers)

    @app.exception_handler(ApiError)
    async def _on_api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(status_code=error.status, content=error_body(error.message, error.field),
                            headers=error.headers)

    scrape = metrics_text(batcher)

    @app.get("/metrics", include_in_schema=False)  # Prometheus text format; open like /health
    async def metrics() -> Response:
        body, content_type = scrape()
        return Response(body, media_type=content_type)

    @app.exception_handler(Exception)
    async def _on_error(_: Request, error: Exception) -> JSONResponse:
        logger.exception("request failed")
        return JSONResponse(status_code=500, content=error_body(f"internal error: {type(error).__name__}: {error}"))

    async def scored(coro, request: Request | None = None, on_disconnect=None):
        """Await a model call; the client going away cancels it (its remaining slices are dropped)."""
        try:
            return await until_disconnected(coro, request, on_disconnect)
        except ValueError as error:  # bad input that only the model can see (e.g. an unknown aggregate)
            raise ApiError(422, str(error)) from error
        except RuntimeError as error:  # Unavailable (shed, past the deadline, stopping) or another model refusal
            retry = getattr(error, "retry_after", None) or batcher.retry_after()
            raise ApiError(503, str(error), headers={"Retry-After": str(retry)}) from error

    async def tournament(scorer: BatchedScorer, run, *args):
        """``run(scorer, *args)`` in a worker thread under the request's deadline, also while it waits for a
        thread (the scorer checks it only between comparisons); a little grace, so that the batcher's own
        deadline answers a tournament that is running."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(run, scorer, *args),
                                          max(scorer.deadline - time.monotonic(), 0.0) + TOURNAMENT_GRACE_S)
        except asyncio.TimeoutError:  # noqa: UP041 - distinct from TimeoutError on 3.10
            scorer.cancel()  # a thread that starts later stops at its first comparison
            raise batcher.timed_out(scorer.timeout_s, "before its tournament finished") from None

    def timeout_of(header: float | None) -> float:
        """This request's deadline: the server's, or less if the client asked (never more)."""
        return config.request_timeout_s if header is None else min(header, config.request_timeout_s)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": getattr(rm, "name", type(rm).__name__),
            "objective": getattr(getattr(rm, "config", None), "objective", None),
            "device": str(getattr(rm, "device", "cpu")),
            # the temperature applied to what the service gives out (tinyrm calibrate); null: raw probabilities
            "temperature": model_temperature(rm, kind="step" if steps_served else "pair"),
            "uptime_s": round(time.time() - started, 3),
            "busy": batcher.busy,
            "queued": batcher.queued,
            "queued_pairs": batcher.queued_pairs,
            "outstanding_pairs": batcher.outstanding_pairs,
            "limits": {"max_batch_size": batcher.max_batch_size, "max_wait_ms": config.max_wait_ms,
                       "slice_pairs": batcher.slice_pairs, "max_queued_pairs": config.max_queued_pairs,
                       "request_timeout_s": config.request_timeout_s,
                       "forward_batch_size": batcher.forward_batch_size,
                       "max_request_bytes": config.max_request_bytes, "max_candidates": config.max_candidates,
                       "max_items": config.max_items, "max_documents": config.max_documents},
            "batching": batcher.stats.as_dict(),
        }

    @app.post("/v1/compare", response_model=CompareResponse, responses=ERRORS)
    async def compare(req: CompareRequest, request: Request,
                      x_request_timeout: RequestTimeout = None) -> CompareResponse:
        probs = await scored(batcher.submit([(req.prompt, req.a, req.b)], req.both_orders,
                                            timeout_s=timeout_of(x_request_timeout)), request)
        return CompareResponse(prob_a=probs[0])

    @app.post("/v1/compare_batch", response_model=CompareBatchResponse, responses=ERRORS)
    async def compare_batch(req: CompareBatchRequest, request: Request,
                            x_request_timeout: RequestTimeout = None) -> CompareBatchResponse:
        check_list_limit(req, config)
        items = [(i.prompt, i.a, i.b) for i in req.items]
        probs = await scored(batcher.submit(items, req.both_orders, timeout_s=timeout_of(x_request_timeout)), request)
        return CompareBatchResponse(prob_a=probs)

    @app.post("/v1/rank", response_model=RankResponse, responses=ERRORS)
    async def rank(req: RankRequest, request: Request, x_request_timeout: RequestTimeout = None) -> RankResponse:
        check_list_limit(req, config)
        scorer = batched_scorer(batcher, timeout_of(x_request_timeout))  # the batcher sizes calls and passes
        result = await scored(tournament(scorer, rank_candidates, req.prompt, req.candidates, req.method),
                              request, scorer.cancel)
        return RankResponse(ranking=result.ranking, scores=result.scores)

    @app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, responses=ERRORS)
    @app.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, responses=ERRORS)
    async def rerank(req: RerankRequest, request: Request, x_request_timeout: RequestTimeout = None) -> RerankResponse:
        check_list_limit(req, config)
        scorer = BatchedScorer(batcher, timeout_of(x_request_timeout))
        results = await scored(tournament(scorer, rerank_documents, req), request, scorer.cancel)
        return RerankResponse(model=getattr(rm, "name", type(rm).__name__), results=results)

    @app.post("/v1/score_steps", response_model=ScoreStepsResponse, responses=ERRORS,
              include_in_schema=steps_served)  # listed only where the model scores steps
    async def score_steps(req: ScoreStepsRequest, request: Request,
                          x_request_timeout: RequestTimeout = None) -> ScoreStepsResponse:
        if not steps_served:
            objective = getattr(getattr(rm, "config", None), "objective", None)
            raise ApiError(400, f"the loaded model (objective {objective!r}) does not score steps; serve a process "
                                "or outcome reward model (tinyrm train --objective process)")
        if req.aggregate is not None and req.aggregate not in AGGREGATES:
            raise ApiError(422, f"unknown aggregate {req.aggregate!r}; choose from {', '.join(AGGREGATES)}",
                           "aggregate")
        check_list_limit(req, config)
        # Shed at once if its steps cannot fit; tokenised on the model thread (which owns the tokenizer: after the
        # call in flight at most), then scored through the batcher as any request is: sliced, merged with other
        # step requests, under the deadline and the queue bound; each step once, the reward aggregated from them.
        timeout, arrived = timeout_of(x_request_timeout), asyncio.get_running_loop().time()

        async def encode():
            # One unit per step in prefix context (fewer in full), held while tokenising: concurrent step requests
            # see each other, so the one that cannot fit is shed before its tokenisation, not after it.
            with batcher.reserved(len(req.steps)):
                try:
                    return await asyncio.wait_for(batcher.run_model(encode_many, rm, [(req.problem, req.steps)]),
                                                  timeout)
                except asyncio.TimeoutError:  # noqa: UP041 - distinct from TimeoutError on 3.10
                    raise batcher.timed_out(timeout, "before its steps were tokenised") from None

        steps = await scored(encode(), request)
        rows = await scored(batcher.submit(steps.encodings, timeout_s=timeout, kind="steps", arrived=arrived), request)
        scores = steps.place(rows)[0]
        kw = {"aggregate": req.aggregate} if req.aggregate is not None else {}
        return ScoreStepsResponse(scores=[float(x) for x in scores], reward=float(solution_reward(rm, scores, **kw)))

    return app


def serve(rm, config: ServeConfig) -> None:
    """Run the app with uvicorn until interrupted."""
    import torch
    import uvicorn

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    # h11 on asyncio, as tested (ray[serve] brings uvloop and httptools, which uvicorn would pick by itself).
    uvicorn.run(create_app(rm, config), host=config.host, port=config.port, log_level=config.log_level,
                timeout_keep_alive=5, timeout_graceful_shutdown=config.graceful_timeout_s, http="h11", loop="asyncio")
