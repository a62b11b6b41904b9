"""Prometheus metrics for one daemon: a `Metrics` per `Runtime`, with its own registry.

Why a module of its own, beside the layers: the HTTP layer counts requests, the runtime's
`Session` times the chunks every API reads (native, `/v1`, and whatever builds on the same
request path), and the governor and model actors count loads and unloads. All of them import
this module, which imports only `prometheus_client` and `api`, so the actors never import
HTTP (the import contracts in pyproject.toml). Direct calls, rather than a listener on the
structlog events the actors already write, because structlog's configuration is global to
the process and tests run many daemons in one process: each `Metrics` owns a
`CollectorRegistry` and nothing here touches prometheus_client's default one.

Gauges (sessions per model, prompt-cache bytes) are read at scrape time from a callable
(the governor's published `Occupancy` counts), so they cost nothing between scrapes.
Every metric name and label is listed in docs/operations.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "mlxollama"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"  # the route label of a request no route matched (a 404)

# seconds; a first token includes any model load the request waited for
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
UNLOAD_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(frozen=True)
class ModelCounts:
    """One loaded (or loading) model's counts, as the governor last published them."""

    name: str
    state: str  # loading | ready | waiting (its load waits for room)
    active: int  # sessions generating (or embedding)
    queued: int  # sessions waiting: for the load, or for a slot in the batch
    prompt_cache: int  # bytes its prompt cache holds (/api/ps `prompt_cache_size`)


class _Residency(Collector):
    """The scrape-time gauges: read `counts()` once per scrape."""

    def __init__(self, counts: Callable[[], Iterable[ModelCounts]]):
        self.counts = counts

    def collect(self):
        active = GaugeMetricFamily(
            f"{PREFIX}_sessions_active", "Sessions generating or embedding now", labels=["model"]
        )
        queued = GaugeMetricFamily(
            f"{PREFIX}_sessions_queued",
            "Sessions waiting for their model to load or for a slot in its batch",
            labels=["model"],
        )
        cache = GaugeMetricFamily(
            f"{PREFIX}_prompt_cache_bytes",
            "Bytes of KV state the model's prompt cache holds",
            labels=["model"],
        )
        loaded = GaugeMetricFamily(
            f"{PREFIX}_models_loaded", "Models resident (state: loading or ready)", labels=["state"]
        )
        states = {"loading": 0, "ready": 0}
        for m in self.counts():
            active.add_metric([m.name], m.active)
            queued.add_metric([m.name], m.queued)
            cache.add_metric([m.name], m.prompt_cache)
            if m.state in states:  # not a load still waiting for room
                states[m.state] += 1
        for state, n in states.items():
            loaded.add_metric([state], n)
        yield from (active, queued, cache, loaded)

    def describe(self):
        return []  # names known only at collect time: keep the registry from calling collect


class Metrics:
    """The daemon's metrics and the calls that move them (one per `Runtime`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests answered, by route template and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from a request's arrival to the end of its answer (a stream's last byte)",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.generated = Counter(
            f"{PREFIX}_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.prompt = Counter(
            f"{PREFIX}_prompt_tokens",
            "Prompt tokens: evaluated, or cached (their KV state came from the prompt cache)",
            ["model", "source"],
            registry=r,
        )
        self.first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from a request's submission to its first piece of output (a load included)",
            ["model"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            f"{PREFIX}_inter_token_seconds",
            "Time between two pieces of one answer, as the request handler receives them",
            ["model"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=r,
        )
        self.load_seconds = Histogram(
            f"{PREFIX}_model_load_seconds",
            "Model loads that succeeded, and how long each took",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.load_failures = Counter(
            f"{PREFIX}_model_load_failures", "Model loads that failed", ["model"], registry=r
        )
        self.unloads = Counter(
            f"{PREFIX}_model_unloads",
            "Models unloaded, by reason (evicted, expired, keep_alive, stop, ...)",
            ["model", "reason"],
            registry=r,
        )
        self.unload_seconds = Histogram(
            f"{PREFIX}_model_unload_seconds",
            "Time a model actor took to free its model",
            ["model"],
            buckets=UNLOAD_BUCKETS,
            registry=r,
        )
        self.cancels = Counter(
            f"{PREFIX}_requests_cancelled",
            "Generations cancelled by DELETE /api/requests/{id}",
            ["model"],
            registry=r,
        )

    def watch_residency(self, counts: Callable[[], Iterable[ModelCounts]]) -> None:
        """Report the per-model gauges from `counts()` at every scrape (call once)."""
        self.registry.register(_Residency(counts))

    def exposition(self) -> bytes:
        """The Prometheus text format of everything here."""
        return generate_latest(self.registry)

    # -- HTTP ---------------------------------------------------------------------------------

    def request(self, route: str | None, method: str, status: int, seconds: float) -> None:
        """One answered request; `route` is the matched URI template (None: no route)."""
        route = route or UNMATCHED
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def stream(self, model: str, started: float | None = None) -> StreamTimer:
        """A timer for one request's stream of chunks (see `StreamTimer`)."""
        return StreamTimer(self, model, time.perf_counter() if started is None else started)

    # -- residency (governor, model actors) ---------------------------------------------------

    def loaded(self, model: str, seconds: float) -> None:
        self.load_seconds.labels(model).observe(seconds)

    def load_failed(self, model: str) -> None:
        self.load_failures.labels(model).inc()

    def unloading(self, model: str, reason: str) -> None:
        self.unloads.labels(model, reason).inc()

    def unloaded(self, model: str, seconds: float) -> None:
        self.unload_seconds.labels(model).observe(seconds)


class StreamTimer:
    """Times one request's answer as its handler reads it: time to the first piece, the
    gaps between pieces, and the token counts of its final chunk (or of its embeddings).
    The labelled gap histogram is looked up once per request, not once per token (and
    only when there is a gap: an embedding model gets no token series)."""

    def __init__(self, metrics: Metrics, model: str, started: float):
        self.metrics = metrics
        self.model = model
        self.started = started
        self.last: float | None = None
        self._gap: Any = None

    def seen(self, item: Any) -> None:
        """Account for one item of a session's queue (a `Chunk` or an `Embeddings`)."""
        now = time.perf_counter()
        done = getattr(item, "done", True)  # Embeddings carry no `done`: one answer
        eval_count = getattr(item, "eval_count", 0)
        if not done or eval_count:  # a load/unload answer (no tokens) is not timed
            if self.last is None:
                self.metrics.first_token.labels(self.model).observe(now - self.started)
            elif not done:
                if self._gap is None:
                    self._gap = self.metrics.inter_token.labels(self.model)
                self._gap.observe(now - self.last)
            self.last = now
        if done:
            self._count(item, eval_count)

    def _count(self, final: Any, eval_count: int) -> None:
        m = self.metrics
        if eval_count:
            m.generated.labels(self.model).inc(eval_count)
        evaluated = getattr(final, "prompt_eval_count", 0)
        cached = getattr(final, "prompt_cached_count", 0)
        if evaluated:
            m.prompt.labels(self.model, "evaluated").inc(evaluated)
        if cached:
            m.prompt.labels(self.model, "cached").inc(cached)
