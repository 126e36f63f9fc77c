"""Python client for ``tinyrm serve``.

>>> client = RewardClient("http://127.0.0.1:8000", api_key=None)  # doctest: +SKIP
>>> client.compare("What is 2 + 2?", "4", "5")  # doctest: +SKIP

Connection errors, timeouts and 429/502/503/504 answers are retried (``tenacity``, at most
``retries`` more attempts). An answer that carries ``Retry-After`` (seconds, or an HTTP date: the
server's 503 when it sheds load or a request missed its deadline) is retried after exactly the time
the server asked for; one asking for more than ``max_retry_after`` seconds (default 30) is not waited
for: it raises ``RewardClientError`` at once, saying how long the server asked to wait. Without the
header, the wait is exponential backoff (``backoff``, then twice that, ... capped at ``max_backoff_s``).
Other errors (401, 413, 422, 500, ...) raise ``RewardClientError`` at once with the server's message.
``on_retry(attempt, wait_s, reason)`` is called before each wait (logging, metrics, tests).
Every request carries ``X-Request-Timeout`` a little under the client's own timeout, so the server drops
work nobody will read and answers 503 before the client gives up on it (without it, a request longer
than the timeout was scored to the server's deadline once per attempt and never answered).
A ``RewardClient`` is also a scorer for ``tinyrm.pairwise.rank`` (it has ``compare_batch``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from ..pairwise.rank import check_candidates
from ..process.steps import split

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 502, 503, 504})


class RewardClientError(RuntimeError):
    """The server refused the request (or could not be reached after all retries)."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class _Retryable(Exception):
    """One failed attempt worth another: no connection, a timeout, or a 429/502/503/504 answer."""

    def __init__(self, message: str, retry_after_s: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # the answer's Retry-After, in seconds from now
        self.status = status  # the answer's HTTP status (None: no answer)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds from now: delta-seconds or an HTTP date (RFC 9110 10.2.3); None if
    absent or unreadable (the caller then backs off on its own). A date in the past is 0."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)  # delta-seconds ("120"; "1.5" is not the RFC's form, but unambiguous)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # the asctime form ("Sun Nov  6 08:49:37 1994") names no zone: it is GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


class RetryAfterWait:
    """Tenacity wait: the server's ``Retry-After`` when the failed attempt carried one, else ``fallback``."""

    def __init__(self, fallback: Callable[[RetryCallState], float]) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(error, _Retryable) and error.retry_after_s is not None:
            return error.retry_after_s
        return self.fallback(retry_state)


@dataclass
class ClientConfig:
    timeout_s: float = 60.0  # per request (connect, read, write)
    retries: int = 3  # extra attempts after the first
    backoff_s: float = 0.25  # first wait; doubles each retry
    max_backoff_s: float = 8.0
    # The longest Retry-After the client waits for; a server asking for more is an error at once
    # (waiting minutes inside a reward call would look like a hung client).
    max_retry_after_s: float = 30.0


class RewardClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float | None = 60.0, retries: int = 3,
                 backoff: float = 0.25, transport: httpx.BaseTransport | None = None,
                 max_retry_after: float = 30.0,
                 on_retry: Callable[[int, float, str], None] | None = None) -> None:
        self.config = ClientConfig(timeout_s=timeout, retries=retries, backoff_s=backoff,
                                   max_retry_after_s=max_retry_after)
        self.on_retry = on_retry  # (attempt just failed, seconds about to be waited, why)
        # The server's deadline a little under ours: its 503 (with Retry-After) arrives before our read timeout.
        headers = {} if timeout is None else {"X-Request-Timeout": f"{timeout - min(2.0, 0.1 * timeout):.3f}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
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
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:  # a setup error: no retry fixes it
            raise RewardClientError(f"{method} {self._http.base_url}{path}: {error}") from error
        except (httpx.TransportError, httpx.TimeoutException) as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from error
        if response.status_code in RETRY_STATUS:
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is not None and retry_after > self.config.max_retry_after_s:
                raise RewardClientError(
                    f"{method} {path}: HTTP {status}: the server asked to wait {retry_after:g} s before "
                    f"retrying (Retry-After), over this client's max_retry_after of "
                    f"{self.config.max_retry_after_s:g} s; not retried ({response.text[:200]})", status)
            raise _Retryable(f"HTTP {status}: {response.text[:200]}", retry_after, status)
        return response

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        logger.info("attempt %d failed (%s); retrying in %.3g s", retry_state.attempt_number, error, wait)
        if self.on_retry is not None:
            self.on_retry(retry_state.attempt_number, wait, str(error))

    def _request(self, method: str, path: str, payload: dict | None = None) -> Any:
        attempts = self.config.retries + 1
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            # the server's Retry-After if it sent one, else backoff_s, 2 x backoff_s, 4 x ... (at most
            # max_backoff_s) between attempts
            wait=RetryAfterWait(wait_exponential(multiplier=self.config.backoff_s, max=self.config.max_backoff_s)),
            retry=retry_if_exception_type(_Retryable),
            before_sleep=self._before_sleep,
        )
        try:
            response = retrying(self._attempt, method, path, payload)
        except RetryError as error:
            last = error.last_attempt.exception()
            status = last.status if isinstance(last, _Retryable) else None  # the last answer's, if one came
            raise RewardClientError(f"{method} {path}: gave up after {attempts} attempts ({last})", status) from last
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict):  # tinyrm's {"error", "field"?}; anything else is shown as sent
                message, field = body.get("error", response.text), body.get("field")
            else:
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
        """``[(index, score), ...]`` best first, as ``RewardModel.rank``; ``candidates`` checked before sending as
        it checks them (``tinyrm.pairwise.rank.check_candidates``: a str is refused, not ranked by character)."""
        candidates = check_candidates(candidates)
        body = self._request("POST", "/v1/rank", {"prompt": prompt, "candidates": candidates, "method": method})
        return [(int(i), float(body["scores"][i])) for i in body["ranking"]]

    def best_of_n(self, prompt: str, candidates: Sequence[str], method: str = "knockout") -> int:
        return self.rank(prompt, candidates, method=method)[0][0]

    def score_steps(self, problem: str, steps: Sequence[str] | str, aggregate: str | None = None) -> dict:
        """``{"scores": [...], "reward": float}`` from a served process reward model.

        ``steps``: a list of steps (any iterable), or a text split into steps before sending exactly as
        ``ProcessRewardModel.score_steps`` splits it (``tinyrm.process.steps.split``; the server cleans each step
        as the local model does), so both score the same steps. A solution with no step (a blank text, an empty
        list) is sent as one empty step ``""``: the reward is the model's verdict on it, as
        ``ProcessRewardModel.score_solution`` gives, and ``scores`` holds that one verdict."""
        steps = split(steps) if isinstance(steps, str) else list(steps)
        payload: dict[str, Any] = {"problem": problem, "steps": steps or [""]}
        if aggregate is not None:
            payload["aggregate"] = aggregate
        return self._request("POST", "/v1/score_steps", payload)
