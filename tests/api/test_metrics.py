"""/metrics over the fake engine: SPEC's families and types, bounded labels, and what each request
adds: tokens once per generation, each rejection once under its reason."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core.errors import EngineOverloaded, GenerationTimeout
from app.engine.types import EngineStats, PrefixCacheStats
from tests.api.conftest import FakeClock, fake_settings, release, running_app
from tests.conftest import iter_sse, metric_value, poll
from tests.fakes import ScriptedEngine

SPEC_FAMILIES = {
    "http_requests": "counter",
    "http_request_duration_seconds": "histogram",
    "tokens_generated": "counter",
    "llm_prompt_tokens": "counter",
    "llm_time_to_first_token_seconds": "histogram",
    "llm_time_per_output_token_seconds": "histogram",
    "llm_queue_size": "gauge",
    "llm_running_requests": "gauge",
    "llm_batch_size": "histogram",
    "llm_cache_requests": "counter",
    "llm_rate_limited": "counter",
    "llm_requests_rejected": "counter",
    "llm_pii_redactions": "counter",
    "llm_model_info": "gauge",
}
REASONS = {"auth", "rate_limit", "overloaded", "timeout", "validation", "pii", "cancelled"}


def families(api: TestClient) -> dict[str, Any]:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def rejected(api: TestClient) -> dict[str, float]:
    return {reason: metric_value(api, "llm_requests_rejected_total", reason=reason) for reason in REASONS}


def test_exposition_parses_and_has_every_spec_metric(api: TestClient) -> None:
    api.post("/v1/generate", json={"prompt": "Hello there", "max_tokens": 3})
    found = families(api)
    for name, kind in SPEC_FAMILIES.items():
        assert name in found, name
        assert found[name].type == kind, name
    assert {s.labels["reason"] for s in found["llm_requests_rejected"].samples} >= REASONS
    assert {s.labels["entity"] for s in found["llm_pii_redactions"].samples} >= {
        "email", "phone", "credit_card", "us_ssn", "ip_address",
    }  # fmt: skip
    [info] = found["llm_model_info"].samples
    assert info.labels == {"model": "scripted-model", "device": "cpu", "dtype": "float32", "quantization": "none"}
    assert metric_value(api, "tokens_generated_total", model="scripted-model") == 3
    assert metric_value(api, "llm_prompt_tokens_total", model="scripted-model") == len("Hello there")
    assert metric_value(api, "llm_time_to_first_token_seconds_count", model="scripted-model") == 1
    assert metric_value(api, "llm_time_per_output_token_seconds_count", model="scripted-model") == 1


def test_custom_pii_patterns_are_labels_too(engine: ScriptedEngine) -> None:
    settings = fake_settings(pii={"custom_patterns": {"ticket": r"TCK-\d+"}})
    with running_app(engine, settings) as (_, api):
        assert metric_value(api, "llm_pii_redactions_total", entity="ticket") == 0
        api.post("/v1/generate", json={"prompt": "About TCK-12."})
        assert metric_value(api, "llm_pii_redactions_total", entity="ticket") == 1


def test_labels_stay_bounded(api: TestClient) -> None:
    api.get("/no/such/route/zz9-plural-z-alpha")
    api.get("/v1/chat/sessions/session-zz9-unique")
    api.post("/v1/chat", json={"messages": [{"role": "user", "content": "Hi"}], "session_id": "zz9-session"})
    api.post("/v1/generate", json={"prompt": "Hi", "max_tokens": 1}, headers={"X-Request-ID": "req-zz9-unique"})
    text = api.get("/metrics").text
    assert "zz9" not in text
    handlers = {s.labels["handler"] for s in families(api)["http_requests"].samples}
    assert {"/v1/chat/sessions/{session_id}", "/v1/generate", "none"} <= handlers


def test_live_gauges_show_running_requests_and_sessions(api: TestClient, engine: ScriptedEngine) -> None:
    api.post("/v1/chat", json={"messages": [{"role": "user", "content": "Hi"}], "session_id": "g"})
    assert metric_value(api, "llm_chat_sessions") == 1
    engine.gate = asyncio.Event()
    with api.stream("POST", "/v1/generate", json={"prompt": "Hold on", "stream": True}) as response:
        try:
            assert poll(lambda: metric_value(api, "llm_running_requests") == 1, timeout_s=10)
            assert metric_value(api, "llm_queue_size") == 0
        finally:
            release(api, engine.gate)
        assert [event for event, _ in iter_sse(response) if event != "comment"][-1] == "done"
    assert metric_value(api, "llm_running_requests") == 0


def test_the_engines_prefix_cache_is_read_at_scrape_time(api: TestClient, engine: ScriptedEngine) -> None:
    found = families(api)
    assert found["llm_prefix_cache_hits"].type == "counter"
    assert found["llm_prefix_cache_hit_tokens"].type == "counter"
    assert found["llm_prefix_cache_bytes"].type == "gauge"
    assert metric_value(api, "llm_prefix_cache_hit_tokens_total") == 0
    engine.prefix_cache = PrefixCacheStats(entries=2, bytes=4096, hits=3, hit_tokens=450)
    assert metric_value(api, "llm_prefix_cache_hits_total") == 3
    assert metric_value(api, "llm_prefix_cache_hit_tokens_total") == 450
    assert metric_value(api, "llm_prefix_cache_bytes") == 4096


AUTOSCALING_ALIASES = (
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
)


def test_autoscalers_find_the_queue_under_vllms_names(engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """What HPA/KEDA examples and the Gateway API Inference Extension scrape: gauges labelled
    `model_name`, the same figures as llm_queue_size / llm_running_requests, and batch slots
    in use (running / engine.max_batch_size) as the cache utilisation."""
    with running_app(engine, fake_settings(engine={"max_batch_size": 4})) as (_, api):
        found = families(api)
        for name in AUTOSCALING_ALIASES:
            assert found[name].type == "gauge", name
            [sample] = found[name].samples
            assert sample.labels == {"model_name": "scripted-model"} and sample.value == 0, sample
        monkeypatch.setattr(engine, "stats", lambda: EngineStats(queued=3, running=2))
        labels = {"model_name": "scripted-model"}
        assert metric_value(api, "llm_queue_size") == metric_value(api, "vllm:num_requests_waiting", **labels) == 3
        assert (
            metric_value(api, "llm_running_requests") == metric_value(api, "vllm:num_requests_running", **labels) == 2
        )
        assert metric_value(api, "vllm:kv_cache_usage_perc", **labels) == 0.5
        assert metric_value(api, "vllm:gpu_cache_usage_perc", **labels) == 0.5


def test_each_rejection_is_counted_once_under_its_reason(engine: ScriptedEngine) -> None:
    """Every kind of refusal, streamed or not: each adds exactly one to its own reason."""
    settings = fake_settings(
        security={"api_keys": ["right-key"]},
        rate_limit={"requests_per_minute": 60, "burst_size": 2},
        pii={"mode": "block"},
    )
    key = {"X-API-Key": "right-key"}
    clock = FakeClock()
    with running_app(engine, settings, clock=clock) as (_, api):

        def post(body: dict[str, Any], headers: dict[str, str] = key) -> Any:
            clock.now += 60  # every bucket full again: only the rate-limit case below is limited
            return api.post("/v1/generate", json=body, headers=headers)

        def counts_after(action: Any) -> dict[str, float]:
            before = rejected(api)
            action()
            after = rejected(api)
            return {reason: after[reason] - before[reason] for reason in REASONS if after[reason] != before[reason]}

        assert counts_after(lambda: post({"prompt": "Hi"}, headers={})) == {"auth": 1}
        assert counts_after(lambda: post({"prompt": 5})) == {"validation": 1}
        assert counts_after(lambda: post({"prompt": "Hi", "stream": True, "temperature": "hot"})) == {"validation": 1}
        assert counts_after(lambda: post({"prompt": "mail me at a@b.io"})) == {"pii": 1}

        def limited() -> None:
            statuses = [post({"prompt": "Hi"}).status_code] + [
                api.get("/v1/models", headers=key).status_code for _ in range(2)
            ]
            assert statuses == [200, 200, 429]

        assert counts_after(limited) == {"rate_limit": 1}

        for stream in (False, True):
            engine.fail_on_submit = EngineOverloaded("full")
            assert counts_after(lambda: post({"prompt": "Hi", "stream": stream})) == {"overloaded": 1}  # noqa: B023
            engine.fail_on_submit = None
            engine.fail_after_tokens, engine.mid_stream_error = 2, GenerationTimeout("too slow")
            assert counts_after(lambda: post({"prompt": "Hi", "stream": stream})) == {"timeout": 1}  # noqa: B023
            engine.fail_after_tokens = None

        def leave_mid_stream() -> None:
            with api.stream("POST", "/v1/generate", json={"prompt": "Hi", "stream": True}, headers=key) as response:
                next(event for event, _ in iter_sse(response) if event == "token")

        assert counts_after(leave_mid_stream) == {"cancelled": 1}
        assert metric_value(api, "llm_rate_limited_total") == 1


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_openai_rejections_are_counted_once(api: TestClient, engine: ScriptedEngine, path: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}]} if "chat" in path else {"prompt": "Hi"}
    engine.fail_after_tokens, engine.mid_stream_error = 2, GenerationTimeout("too slow")
    api.post(path, json=body)
    api.post(path, json={**body, "stream": True})
    engine.fail_after_tokens, engine.fail_on_submit = None, EngineOverloaded("full")
    api.post(path, json=body)
    api.post(path, json={**body, "stream": True})
    counts = rejected(api)
    assert (counts["timeout"], counts["overloaded"], counts["cancelled"]) == (2, 2, 0)
