"""Prometheus metrics of the LLM work. HTTP metrics come from prometheus-fastapi-instrumentator
into the same per-app registry, so every app built (tests build many) has its own.

Label values come from bounded sets only: the served model, a rejection reason, a PII entity,
a cache result. Live values (queue, running requests, cache, sessions) are read at scrape time;
the queue figures are also published under vLLM's names for autoscalers and inference gateways.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core.cache import CacheStats

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""From a GPU's tens of milliseconds to a loaded CPU's tens of seconds."""
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REJECT_REASONS = ("auth", "rate_limit", "overloaded", "timeout", "validation", "pii", "cancelled")


class PrefixCacheFigures(Protocol):
    """What the engine tells of its prefix cache (the engine's `PrefixCacheStats`)."""

    @property
    def hits(self) -> int: ...
    @property
    def hit_tokens(self) -> int: ...
    @property
    def bytes(self) -> int: ...


@dataclass(frozen=True)
class LiveValues:
    """Where the scrape-time gauges come from; each returns None while there is nothing to show."""

    queue: Callable[[], tuple[int, int]]
    """(waiting, running) requests of the engine."""
    batch_slots: int
    """Sequences the engine decodes together at most (`engine.max_batch_size`)."""
    cache: Callable[[], CacheStats | None]
    sessions: Callable[[], int]
    prefix_cache: Callable[[], PrefixCacheFigures | None]


class _LiveCollector(Collector):
    def __init__(self, live: LiveValues, model_name: str) -> None:
        self._live = live
        self._model_name = model_name

    def collect(self) -> Iterator[Metric]:
        queued, running = self._live.queue()
        yield GaugeMetricFamily("llm_queue_size", "Requests waiting for the engine.", value=queued)
        yield GaugeMetricFamily("llm_running_requests", "Requests being generated now.", value=running)
        yield from self._autoscaling_aliases(queued, running)
        yield GaugeMetricFamily("llm_chat_sessions", "Chat sessions held.", value=self._live.sessions())
        cache = self._live.cache()
        results = CounterMetricFamily("llm_cache_requests", "Response cache lookups by result.", labels=["result"])
        results.add_metric(["hit"], cache.hits if cache else 0)
        results.add_metric(["miss"], cache.misses if cache else 0)
        yield results
        yield GaugeMetricFamily("llm_cache_entries", "Responses in the cache.", value=cache.size if cache else 0)
        yield CounterMetricFamily(
            "llm_cache_evictions", "Responses evicted to make room.", value=cache.evictions if cache else 0
        )
        prefixes = self._live.prefix_cache()
        yield CounterMetricFamily(
            "llm_prefix_cache_hits",
            "Prompts that reused the KV of an earlier sequence they begin with.",
            value=prefixes.hits if prefixes else 0,
        )
        yield CounterMetricFamily(
            "llm_prefix_cache_hit_tokens",
            "Prompt tokens not prefilled again: their KV came from the prefix cache.",
            value=prefixes.hit_tokens if prefixes else 0,
        )
        yield GaugeMetricFamily(
            "llm_prefix_cache_bytes", "Bytes of KV held by the prefix cache.", value=prefixes.bytes if prefixes else 0
        )

    def _autoscaling_aliases(self, queued: int, running: int) -> Iterator[Metric]:
        """The same figures under vLLM's names, labelled as vLLM labels them, because that is what
        autoscalers and inference gateways scrape: the Gateway API Inference Extension's model
        server protocol (queued, running, KV cache utilisation) and the KEDA/HPA examples."""
        usage = min(1.0, running / self._live.batch_slots) if self._live.batch_slots > 0 else 0.0
        figures = (
            ("vllm:num_requests_waiting", "Requests waiting for the engine (alias of llm_queue_size).", queued),
            ("vllm:num_requests_running", "Requests being generated now (alias of llm_running_requests).", running),
            ("vllm:kv_cache_usage_perc", "Batch slots in use, 0..1: running / engine.max_batch_size.", usage),
            ("vllm:gpu_cache_usage_perc", "Older name of vllm:kv_cache_usage_perc.", usage),
        )
        for name, documentation, value in figures:
            family = GaugeMetricFamily(name, documentation, labels=["model_name"])
            family.add_metric([self._model_name], value)
            yield family

    def describe(self) -> Iterable[Metric]:
        return []


class LLMMetrics:
    def __init__(self, model_name: str, pii_entities: Iterable[str] = (), key_names: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        registry = self.registry
        self.tokens_generated = Counter(
            "tokens_generated", "Tokens generated by the model (cache hits add none).", ["model"], registry=registry
        )
        self.prompt_tokens = Counter(
            "llm_prompt_tokens", "Prompt tokens the model processed.", ["model"], registry=registry
        )
        self.time_to_first_token = Histogram(
            "llm_time_to_first_token_seconds",
            "Seconds from admission to the first generated text.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "llm_time_per_output_token_seconds",
            "Seconds per generated token after the first.",
            ["model"],
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "llm_batch_size", "Sequences in each decoding step.", buckets=BATCH_BUCKETS, registry=registry
        )
        self.rate_limited = Counter("llm_rate_limited", "Requests answered 429.", registry=registry)
        self.rejected = Counter(
            "llm_requests_rejected", "Requests turned away or stopped, by reason.", ["reason"], registry=registry
        )
        self.pii_redactions = Counter(
            "llm_pii_redactions", "PII occurrences redacted, by entity.", ["entity"], registry=registry
        )
        self.key_requests = Counter(
            "llm_key_requests", "Requests answered, by key name (`anonymous` without one).", ["key"], registry=registry
        )
        self.key_tokens = Counter(
            "llm_key_tokens",
            "Tokens in the answers, by key name and kind (prompt | completion); cache hits included.",
            ["key", "kind"],
            registry=registry,
        )
        self.state_errors = Counter(
            "llm_state_backend_errors",
            "Calls to the shared state backend (Redis) that failed or timed out, by operation.",
            ["operation"],
            registry=registry,
        )
        self.state_up = Gauge(
            "llm_state_backend_up", "1 while the state backend answers (always 1 for memory).", registry=registry
        )
        self.state_up.set(1)
        self.model_info = Info("llm_model", "The model being served.", registry=registry)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for entity in pii_entities:
            self.pii_redactions.labels(entity)
        for key in key_names:
            self.key_requests.labels(key)
            self.key_tokens.labels(key, "prompt")
            self.key_tokens.labels(key, "completion")
        for family in (self.tokens_generated, self.prompt_tokens, self.time_to_first_token, self.time_per_output_token):
            family.labels(model_name)

    def watch(self, live: LiveValues) -> None:
        self.registry.register(_LiveCollector(live, self.model_name))

    def reject(self, reason: str | None) -> None:
        """Count one request turned away or stopped; None (an error that is no rejection) counts nothing."""
        if reason is not None:
            self.rejected.labels(reason).inc()
            if reason == "rate_limit":
                self.rate_limited.inc()

    def count_key_usage(self, key: str, requests: int, prompt_tokens: int, completion_tokens: int) -> None:
        """`key` is a configured key name or `anonymous`: a bounded set."""
        self.key_requests.labels(key).inc(requests)
        self.key_tokens.labels(key, "prompt").inc(prompt_tokens)
        self.key_tokens.labels(key, "completion").inc(completion_tokens)

    def count_redactions(self, counts: Tally[str]) -> None:
        for entity, count in counts.items():
            self.pii_redactions.labels(entity).inc(count)

    def state_backend_error(self, operation: str) -> None:
        self.state_errors.labels(operation).inc()

    def state_backend_up(self, up: bool) -> None:
        self.state_up.set(1 if up else 0)

    def observe_batch(self, size: int) -> None:
        """Called on the inference thread; prometheus_client is thread-safe."""
        self.batch_size.observe(size)

    def observe_first_token(self, seconds: float) -> None:
        self.time_to_first_token.labels(self.model_name).observe(seconds)

    def observe_finished(self, prompt_tokens: int, completion_tokens: int, decode_s: float) -> None:
        """One finished generation of the model's own (cache hits and shared answers are not)."""
        self.prompt_tokens.labels(self.model_name).inc(prompt_tokens)
        self.tokens_generated.labels(self.model_name).inc(completion_tokens)
        if completion_tokens > 1:
            self.time_per_output_token.labels(self.model_name).observe(decode_s / (completion_tokens - 1))
