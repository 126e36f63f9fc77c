"""``tinyrm serve --engine ray``: the same FastAPI app as N Ray Serve replicas behind one address.

Each replica is a Ray actor that loads the model itself (``tinyrm.auto.load`` of the path or hub id it
is given, never a pickled model), then builds ``create_app(rm, config)`` around it: Serve calls the
deployment's ``__serve_build_asgi_app__`` after ``__init__`` (``serve.ingress()`` with no app) and runs
the app's lifespan inside the replica, which starts the app's own batcher on the replica's event loop.
Ray Serve's proxy listens on ``--host``/``--port`` and routes every path (``route_prefix="/"``) to a
replica, so paths, schemas, the key, the limits and the error bodies are the single process's.

Batching stays the app's (one model thread per replica, the same fairness, deadlines and limits as
the single process, merging across endpoints, rank and rerank included), not Ray Serve's
``@serve.batch``, which would batch one method's calls and know nothing of the app's queue. Each
replica therefore admits many requests at once (``MAX_ONGOING_REQUESTS``; Serve's default of 5 would
hold the rest in the proxy, where the batcher can neither merge nor shed them).

Ray is started here (a new local instance, stopped on exit; not a ``ray start`` cluster already on the
machine, which ``ray_address="auto"`` joins) unless ``ray_address`` (else ``$RAY_ADDRESS``) names a
cluster. The command blocks until SIGTERM or SIGINT, then shuts Serve down (or, on a cluster where
Serve was already running, deletes only this application) and Ray with it when it started Ray.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from ..errors import UserError
from .app import ServeConfig, create_app

APP_NAME = "tinyrm"  # the Serve application (serve.status(), `serve status`)
DEPLOYMENT_NAME = "TinyRM"  # replica actors are named SERVE_REPLICA::tinyrm#TinyRM#<id> (namespace "serve")
# Requests one replica may hold: enough that its batcher sees the concurrent load itself and merges,
# schedules and sheds it (Serve's default, 5, queues the rest in the proxy).
MAX_ONGOING_REQUESTS = 1024
HEALTH_CHECK_PERIOD_S = 5.0  # a replica whose batcher loop died is replaced within about this


def _import_serve() -> tuple[ModuleType, ModuleType]:
    try:
        import ray
        from ray import serve
    except ImportError as error:
        raise UserError(f"--engine ray needs Ray Serve: pip install 'tinyrm[ray]' ({error})") from None
    return ray, serve


class ReplicaApp:
    """One replica: the model, then the app around it (Serve wraps this class with ``serve.ingress()``)."""

    def __init__(self, model: str, config: dict[str, Any]) -> None:
        from ..auto import load

        self.config = ServeConfig(**config)
        if self.config.threads:
            import torch

            torch.set_num_threads(self.config.threads)
        # Ray leaves CUDA_VISIBLE_DEVICES alone for a replica without GPUs, so say CPU: the replica would
        # otherwise load onto a GPU Ray never gave it. With GPUs, Ray makes its own the only ones visible.
        self.rm = load(model, device=None if self.config.gpus_per_replica else "cpu")
        self.built: Any = None  # the app (not `self.app`: Serve's wrapper owns that name)

    def __serve_build_asgi_app__(self) -> Any:
        """Called by Serve after ``__init__``; it then runs the app's lifespan (which starts the batcher)."""
        self.built = create_app(self.rm, self.config)
        return self.built

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose batcher loop is gone answers nothing, so it is
        reported unhealthy and replaced."""
        task = getattr(getattr(getattr(self.built, "state", None), "batcher", None), "_task", None)
        if task is None or task.done():
            raise RuntimeError("the batcher is not running")


def build_app(serve: ModuleType, model: str, config: ServeConfig) -> Any:
    """The bound Serve application: ``config.replicas`` replicas of :class:`ReplicaApp`."""
    actor_options: dict[str, Any] = {"num_cpus": 1}
    if config.gpus_per_replica:
        actor_options["num_gpus"] = config.gpus_per_replica
    deployment = serve.deployment(
        serve.ingress()(ReplicaApp), name=DEPLOYMENT_NAME, num_replicas=config.replicas,
        ray_actor_options=actor_options, max_ongoing_requests=MAX_ONGOING_REQUESTS,
        # On shutdown a replica gets as long as the single process gives its accepted requests.
        graceful_shutdown_timeout_s=config.graceful_timeout_s, health_check_period_s=HEALTH_CHECK_PERIOD_S,
    )
    return deployment.bind(model, asdict(config))


@dataclass
class RayCluster:
    """Where the app runs, and whether this process started Serve there (and so shuts it down)."""

    address: str
    started_serve: bool


def _connect(ray: ModuleType, serve: ModuleType, config: ServeConfig) -> RayCluster:
    address = config.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address)
    else:  # "local": a new Ray owned by this command, never one a `ray start` left on the machine (ask "auto")
        ray.init(address="local", include_dashboard=False)
    status = serve.status()  # empty when no Serve instance runs on the cluster (a running one has proxies)
    return RayCluster(ray.get_runtime_context().gcs_address, started_serve=not (status.proxies or status.applications))


def _check_resources(ray: ModuleType, config: ServeConfig) -> None:
    """A local Ray cannot grow: too many replicas would wait for resources for ever, so say so now."""
    have = ray.cluster_resources()
    for name, each in (("CPU", 1.0), ("GPU", config.gpus_per_replica)):
        if config.replicas * each > have.get(name, 0.0):
            raise UserError(f"--replicas {config.replicas} need {config.replicas * each:g} {name}s ({each:g} per "
                            f"replica); the local Ray has {have.get(name, 0.0):g}")


class _Stop(Exception):
    """Raised in the main thread by SIGTERM / SIGINT, wherever it is waiting."""


_stopping = threading.Event()  # also set, in case Ray code that was interrupted swallowed the exception


def _raise_stop(signum: int, _frame: Any) -> None:
    _stopping.set()
    raise _Stop(signum)


def _shutdown(ray: ModuleType, serve: ModuleType, cluster: RayCluster | None) -> None:
    if cluster is not None and ray.is_initialized():
        if cluster.started_serve:
            serve.shutdown()  # the proxies stop, the replicas drain (graceful_shutdown_timeout_s)
        else:
            try:
                serve.delete(APP_NAME)  # a shared Serve instance keeps its other applications
            except Exception:  # noqa: BLE001 - never deployed (a failure before serve.run)
                pass
    ray.shutdown()  # stops the local Ray this process started; on a cluster only disconnects


def _failure(serve: ModuleType, error: Exception) -> str:
    """The last line of the replicas' own error (Serve's exception only says that the deployment failed)."""
    try:
        message = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME].message
    except Exception:  # noqa: BLE001 - the application may be gone already
        message = ""
    lines = [line.strip() for line in (message or str(error)).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def serve_on_ray(model: str, config: ServeConfig) -> int:
    """Deploy, print where it listens, block until SIGTERM / SIGINT, then shut down cleanly (exit 0)."""
    ray, serve = _import_serve()
    local = not (config.ray_address or os.environ.get("RAY_ADDRESS"))
    if local:  # a bad path fails here, not after every replica failed to load it a few times
        from ..backbone import resolve_model_path

        resolve_model_path(model)
    _stopping.clear()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    cluster: RayCluster | None = None
    try:
        cluster = _connect(ray, serve, config)
        # ray.init installs its own SIGTERM handler (sys.exit): ours must stay in charge.
        signal.signal(signal.SIGTERM, _raise_stop)
        if local:
            _check_resources(ray, config)
        level = config.log_level.upper()
        logging.getLogger("ray.serve").setLevel(level)  # Serve's messages in this process too
        serve.start(http_options={"host": config.host, "port": config.port, "keep_alive_timeout_s": 5},
                    logging_config={"log_level": level})
        try:
            serve.run(build_app(serve, model, config), name=APP_NAME, route_prefix="/",
                      logging_config={"log_level": level})
        except _Stop:
            raise
        except Exception as error:  # a replica that cannot load the model: one line, not Serve's traceback
            raise UserError(f"the Ray Serve deployment failed: {_failure(serve, error)}") from error
        if _stopping.is_set():
            raise _Stop()
        gpus = f", {config.gpus_per_replica:g} GPU each" if config.gpus_per_replica else " on CPU"
        replicas = f"{config.replicas} Ray Serve replica{'s' if config.replicas > 1 else ''}"
        print(f"tinyrm serve: {model} on {replicas}{gpus} (Ray at {cluster.address}); "
              f"http://{config.host}:{config.port} (docs at /docs)"
              f"{'; API key required' if config.api_key else ''}", flush=True)
        while not _stopping.wait(3600):  # the signal handler interrupts the wait
            pass
    except _Stop:
        pass
    finally:
        # A second SIGTERM must not cut the shutdown short (a second Ctrl-C still does).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            _shutdown(ray, serve, cluster)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print("tinyrm serve: Ray Serve shut down", flush=True)
    return 0
