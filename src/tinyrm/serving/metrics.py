"""What the scheduler did, for ``/health`` (JSON) and ``/metrics`` (Prometheus text format).

The counters live in ``SchedulerStats`` (updated on the event loop); ``/metrics`` reads them at scrape
time through a collector on a registry of the app's own (several apps in one process, as in the tests
and Ray Serve replicas, never share series).
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Request latency histogram bounds (seconds): from a 1-pair answer on a GPU to a timed-out request.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
WINDOW = 2048  # latencies kept for the percentiles in /health


@dataclass
class SchedulerStats:
    """Counters exposed in /health and /metrics, so batching and fairness can be observed (and tested)."""

    batches: int = 0  # forward calls (one compare_batch each)
    slices: int = 0
    requests: int = 0  # requests whose every pair went through the model
    pairs: int = 0
    max_batch_requests: int = 0
    max_batch_pairs: int = 0
    requests_per_batch: Counter = field(default_factory=Counter)
    busy_seconds: float = 0.0
    shed: int = 0  # refused at once: the queue bound (max_queued_pairs)
    timed_out: int = 0  # failed at their deadline, remaining slices dropped
    disconnected: int = 0  # client went away, remaining slices dropped
    latencies: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0

    def record_call(self, requests: int, slices: int, pairs: int, seconds: float) -> None:
        self.batches += 1
        self.slices += slices
        self.pairs += pairs
        self.busy_seconds += seconds
        self.max_batch_requests = max(self.max_batch_requests, requests)
        self.max_batch_pairs = max(self.max_batch_pairs, pairs)
        self.requests_per_batch[requests] += 1

    def observe_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def pairs_per_second(self) -> float | None:
        """The model's measured rate while busy (None before the first call)."""
        return self.pairs / self.busy_seconds if self.busy_seconds > 0 else None

    def percentiles(self) -> dict[str, float | None]:
        """p50 / p90 / p99 of the last ``WINDOW`` answered requests, in ms (nearest rank)."""
        values = sorted(self.latencies)
        out: dict[str, float | None] = {}
        for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
            out[name] = round(1000 * values[min(len(values) - 1, int(q * len(values)))], 3) if values else None
        return out

    def as_dict(self) -> dict[str, Any]:
        rate = self.pairs_per_second()
        return {
            "batches": self.batches, "slices": self.slices, "requests": self.requests, "pairs": self.pairs,
            "max_batch_requests": self.max_batch_requests, "max_batch_pairs": self.max_batch_pairs,
            "requests_per_batch": {str(k): v for k, v in sorted(self.requests_per_batch.items())},
            "busy_seconds": round(self.busy_seconds, 3),
            "pairs_per_second": None if rate is None else round(rate, 2),
            "shed": self.shed, "timed_out": self.timed_out, "disconnected": self.disconnected,
            "latency_ms": {**self.percentiles(), "count": self.latency_count},
        }


def metrics_text(batcher) -> Callable[[], tuple[bytes, str]]:
    """A function giving ``batcher``'s metrics in the Prometheus text format (and its content type), read
    from a registry of its own."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    class SchedulerCollector:
        def collect(self):
            s: SchedulerStats = batcher.stats
            for name, doc, value in (
                ("tinyrm_queue_requests", "requests with pairs waiting for the model", batcher.queued),
                ("tinyrm_queue_pairs", "pairs waiting for the model", batcher.queued_pairs),
                ("tinyrm_outstanding_pairs", "pairs accepted and not yet answered (bounded by max_queued_pairs)",
                 batcher.outstanding_pairs),
                ("tinyrm_busy", "1 while a forward call runs", int(batcher.busy)),
            ):
                yield GaugeMetricFamily(name, doc, value=value)
            for name, doc, value in (
                ("tinyrm_batches", "forward calls (compare_batch on the model thread)", s.batches),
                ("tinyrm_slices", "request slices scored", s.slices),
                ("tinyrm_pairs", "pairs scored", s.pairs),
                ("tinyrm_requests", "requests scored to the end", s.requests),
                ("tinyrm_requests_shed", "requests refused at once with 503 (queue bound)", s.shed),
                ("tinyrm_requests_timed_out", "requests failed with 503 at their deadline", s.timed_out),
                ("tinyrm_requests_disconnected", "requests dropped because the client went away", s.disconnected),
                ("tinyrm_busy_seconds", "seconds the model spent in forward calls", s.busy_seconds),
            ):
                yield CounterMetricFamily(name, doc, value=value)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), s.latency_buckets):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            yield HistogramMetricFamily("tinyrm_request_latency_seconds",
                                        "answered scoring requests, arrival to answer", buckets=buckets,
                                        sum_value=s.latency_sum)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector())
    return lambda: (generate_latest(registry), CONTENT_TYPE_LATEST)
