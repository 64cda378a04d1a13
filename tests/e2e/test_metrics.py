"""/metrics: parses with prometheus_client, passes promtool, names SPEC's metrics, bounded labels."""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import metric_value

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


def scrape(client: httpx.Client) -> str:
    client.post("/v1/generate", json={"prompt": "Hello there", "max_tokens": 3})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_exposition_parses_and_has_every_spec_metric(client: httpx.Client) -> None:
    families = {f.name: f for f in text_string_to_metric_families(scrape(client))}
    for name, kind in SPEC_FAMILIES.items():
        assert name in families, name
        assert families[name].type == kind, name
    reasons = {s.labels["reason"] for s in families["llm_requests_rejected"].samples}
    assert {"auth", "rate_limit", "overloaded", "timeout", "validation", "pii", "cancelled"} <= reasons
    info = next(s for s in families["llm_model_info"].samples)
    assert info.labels["model"] == "smollm2-135m-instruct" and info.labels["device"] == "cpu"
    assert metric_value(client, "tokens_generated_total", model="smollm2-135m-instruct") > 0


def test_promtool_accepts_the_exposition(client: httpx.Client) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI (.ci/run installs the Debian package prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "metrics"], input=scrape(client), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_labels_stay_bounded(client: httpx.Client) -> None:
    client.get("/no/such/route/zz9-plural-z-alpha")
    client.get("/v1/chat/sessions/session-zz9-unique")
    client.post("/v1/generate", json={"prompt": "Hi", "max_tokens": 1}, headers={"X-Request-ID": "req-zz9-unique"})
    text = scrape(client)
    assert "zz9" not in text
    handlers = {
        s.labels["handler"]
        for f in text_string_to_metric_families(text)
        if f.name == "http_requests"
        for s in f.samples
    }
    assert "/v1/chat/sessions/{session_id}" in handlers and "none" in handlers


def test_rejections_are_counted_by_reason(client: httpx.Client) -> None:
    before = metric_value(client, "llm_requests_rejected_total", reason="validation")
    client.post("/v1/generate", json={"prompt": "Hi", "temperature": "hot"})
    client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert metric_value(client, "llm_requests_rejected_total", reason="validation") == before + 2
