"""PII through the HTTP API: redacted prompts and history, redacted streams, block mode."""

from __future__ import annotations

import json
import logging
import re
import uuid

import httpx
import pytest

from tests.conftest import GUARDED_KEYS, OUTPUT_PATTERN, LiveServer, assert_error, iter_sse, metric_value

ALICE = {"X-API-Key": GUARDED_KEYS["alice"], "X-Forwarded-For": "10.251.0.1"}


def test_echoed_prompt_is_redacted_before_the_model_sees_it(client: httpx.Client) -> None:
    before = metric_value(client, "llm_pii_redactions_total", entity="email")
    prompt = "Reply to jane.roe@example.org or call 555-867-5309 about card 4111 1111 1111 1111."
    body = client.post("/v1/generate", json={"prompt": prompt, "max_tokens": 2}).json()
    assert body["prompt"] == "Reply to [EMAIL] or call [PHONE] about card [CREDIT_CARD]."
    assert body["usage"]["prompt_tokens"] > 0
    assert metric_value(client, "llm_pii_redactions_total", entity="email") == before + 1


def test_chat_history_keeps_only_the_redacted_text(client: httpx.Client) -> None:
    session_id = f"pii-{uuid.uuid4().hex[:8]}"
    turn = {"messages": [{"role": "user", "content": "I am at 10.1.2.3, ssn 123-45-6789"}], "max_tokens": 2}
    assert client.post("/v1/chat", json={**turn, "session_id": session_id}).status_code == 200
    stored = client.get(f"/v1/chat/sessions/{session_id}").json()["messages"]
    assert stored[0]["content"] == "I am at [IP_ADDRESS], ssn [US_SSN]"


def test_output_is_redacted_streamed_or_not(guarded_server: LiveServer) -> None:
    """Greedy twice (a seed only changes the cache key), so both runs are the model's own work."""
    request = {"prompt": "Once upon a time, in a small village by a river,", "max_tokens": 48, "temperature": 0}
    with guarded_server.client() as http:
        whole = http.post("/v1/generate", json={**request, "seed": 1}, headers=ALICE).json()["generated_text"]
        with http.stream("POST", "/v1/generate", json={**request, "seed": 2, "stream": True}, headers=ALICE) as r:
            pieces = [json.loads(data)["text"] for event, data in iter_sse(r) if event == "token"]
    streamed = "".join(pieces)
    assert "[ARTICLE]" in whole, whole
    assert not re.search(OUTPUT_PATTERN, whole) and not re.search(OUTPUT_PATTERN, streamed)
    assert streamed == whole
    assert len(pieces) > 10  # still streamed token by token, not held to the end


def test_block_mode_refuses_pii_with_400(guarded_server: LiveServer) -> None:
    with guarded_server.client() as http:
        before = metric_value(http, "llm_requests_rejected_total", reason="pii")
        response = http.post("/v1/generate", json={"prompt": "my ssn is 123-45-6789"}, headers=ALICE)
        assert_error(response, 400, code="pii_detected", param="prompt")
        assert "us_ssn" in response.json()["error"]["message"]
        assert "123-45-6789" not in response.text
        chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "a@b.io"}]}
        assert_error(
            http.post("/v1/chat", json={**chat, "stream": True}, headers=ALICE),
            400,
            code="pii_detected",
            param="messages.1.content",
        )
        assert metric_value(http, "llm_requests_rejected_total", reason="pii") == before + 2


def test_logged_prompts_and_outputs_are_redacted(guarded_server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app.generation")
    prompt = "Tell me a story about a fox and a crow, starting with: Once upon a time,"
    with guarded_server.client() as http:
        body = {"prompt": prompt, "max_tokens": 32, "temperature": 0, "seed": 11}
        assert http.post("/v1/generate", json=body, headers=ALICE).status_code == 200
    finished = [r for r in caplog.records if r.getMessage() == "generation finished"]
    logged = vars(finished[-1])
    assert logged["prompt"] == prompt
    assert "[ARTICLE]" in logged["output"] and not re.search(OUTPUT_PATTERN, logged["output"])


def test_protocol_endpoints_share_the_redaction(client: httpx.Client) -> None:
    prompt = "Forward this to jane.roe@example.org:"
    completion = client.post(
        "/v1/completions", json={"model": "x", "prompt": prompt, "max_tokens": 2, "echo": True}
    ).json()
    assert completion["choices"][0]["text"].startswith("Forward this to [EMAIL]:")
    tgi = client.post(
        "/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 2, "return_full_text": True}}
    ).json()
    assert tgi["generated_text"].startswith("Forward this to [EMAIL]:")
