"""Python client for ``tinyrm serve``.

>>> client = RewardClient("http://127.0.0.1:8000", api_key=None)  # doctest: +SKIP
>>> client.compare("What is 2 + 2?", "4", "5")  # doctest: +SKIP

Connection errors, timeouts and 429/502/503/504 answers are retried with exponential backoff
(``tenacity``: ``backoff``, then twice that, ... capped at ``max_backoff_s``); other errors (401, 413,
422, 500, ...) raise ``RewardClientError`` at once with the server's message.
A ``RewardClient`` is also a scorer for ``tinyrm.pairwise.rank`` (it has ``compare_batch``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

RETRY_STATUS = frozenset({429, 502, 503, 504})


class RewardClientError(RuntimeError):
    """The server refused the request (or could not be reached after all retries)."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class _Retryable(Exception):
    """One failed attempt worth another: no connection, a timeout, or a 429/502/503/504 answer."""


@dataclass
class ClientConfig:
    timeout_s: float = 60.0  # per request (connect, read, write)
    retries: int = 3  # extra attempts after the first
    backoff_s: float = 0.25  # first wait; doubles each retry
    max_backoff_s: float = 8.0


class RewardClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.25, transport: httpx.BaseTransport | None = None) -> None:
        self.config = ClientConfig(timeout_s=timeout, retries=retries, backoff_s=backoff)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ transport
    def _attempt(self, method: str, path: str, payload: dict | None) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=payload)
        except (httpx.TransportError, httpx.TimeoutException) as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from error
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code}: {response.text[:200]}")
        return response

    def _request(self, method: str, path: str, payload: dict | None = None) -> Any:
        attempts = self.config.retries + 1
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            # waits backoff_s, 2 x backoff_s, 4 x ... (at most max_backoff_s) between attempts
            wait=wait_exponential(multiplier=self.config.backoff_s, max=self.config.max_backoff_s),
            retry=retry_if_exception_type(_Retryable),
        )
        try:
            response = retrying(self._attempt, method, path, payload)
        except RetryError as error:
            last = error.last_attempt.exception()
            raise RewardClientError(f"{method} {path}: gave up after {attempts} attempts ({last})") from last
        if response.status_code >= 400:
            try:
                body = response.json()
                message, field = body.get("error", response.text), body.get("field")
            except ValueError:
                message, field = response.text, None
            raise RewardClientError(f"{method} {path}: HTTP {response.status_code}: {message}",
                                    response.status_code, field)
        return response.json()

    # ------------------------------------------------------------------ API
    def health(self) -> dict:
        return self._request("GET", "/health")

    def compare(self, prompt: str, a: str, b: str, both_orders: bool | None = None) -> float:
        """P(a better than b)."""
        payload = {"prompt": prompt, "a": a, "b": b}
        if both_orders is not None:
            payload["both_orders"] = both_orders
        return float(self._request("POST", "/v1/compare", payload)["prob_a"])

    def compare_batch(self, items: Iterable[tuple[str, str, str]], batch_size: int | None = None,
                      both_orders: bool | None = None) -> list[float]:
        """P(a better than b) per ``(prompt, a, b)``; ``batch_size`` is the server's business and ignored."""
        payload: dict[str, Any] = {"items": [{"prompt": p, "a": a, "b": b} for p, a, b in items]}
        if not payload["items"]:
            return []
        if both_orders is not None:
            payload["both_orders"] = both_orders
        return [float(p) for p in self._request("POST", "/v1/compare_batch", payload)["prob_a"]]

    def rank(self, prompt: str, candidates: Sequence[str], method: str = "knockout") -> list[tuple[int, float]]:
        """``[(index, score), ...]`` best first, as ``RewardModel.rank``."""
        body = self._request("POST", "/v1/rank", {"prompt": prompt, "candidates": list(candidates), "method": method})
        return [(int(i), float(body["scores"][i])) for i in body["ranking"]]

    def best_of_n(self, prompt: str, candidates: Sequence[str], method: str = "knockout") -> int:
        return self.rank(prompt, candidates, method=method)[0][0]

    def score_steps(self, problem: str, steps: Sequence[str], aggregate: str | None = None) -> dict:
        """``{"scores": [...], "reward": float}`` from a served process reward model."""
        payload: dict[str, Any] = {"problem": problem, "steps": list(steps)}
        if aggregate is not None:
            payload["aggregate"] = aggregate
        return self._request("POST", "/v1/score_steps", payload)
