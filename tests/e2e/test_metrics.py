"""/metrics of the real engine: promtool accepts the exposition, and the engine feeds what only it measures.

Names, types, labels and counting are checked over the fake engine in tests/api/test_metrics.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx
import pytest

from tests.api.test_metrics import AUTOSCALING_ALIASES
from tests.conftest import metric_value


def scrape(client: httpx.Client) -> str:
    client.post("/v1/generate", json={"prompt": "Hello there", "max_tokens": 3})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_promtool_accepts_the_exposition(client: httpx.Client) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI (.ci/run installs the Debian package prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "metrics"], input=scrape(client), capture_output=True, text=True)
    # The one lint promtool may raise: the colon of vLLM's names, which the autoscaling aliases
    # keep because that is the name autoscalers and inference gateways look for (exit 3: lint
    # problems only; a parse error is 1).
    complaints = set((result.stdout + result.stderr).splitlines())
    assert complaints == {f"{name} metric names should not contain ':'" for name in AUTOSCALING_ALIASES}, complaints
    assert result.returncode == 3


def test_the_real_engine_feeds_its_metrics(client: httpx.Client) -> None:
    scrape(client)
    assert metric_value(client, "llm_batch_size_count") > 0  # observed on the inference thread
    assert metric_value(client, "tokens_generated_total", model="smollm2-135m-instruct") >= 3
    assert metric_value(client, "llm_model_info", model="smollm2-135m-instruct", device="cpu", dtype="float32") == 1
