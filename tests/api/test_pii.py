"""PII over HTTP: redacted before the model sees it (prompts, history, logs), redacted in what it says
(streams included, nothing leaking across token boundaries), or refused in block mode."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import fake_settings, running_app
from tests.conftest import assert_error, iter_sse, metric_value
from tests.fakes import ScriptedEngine, decode_prompt

LEAKY = "Mail jane.roe@example.org or pay with 4111 1111 1111 1111 at 10.1.2.3 today."
REDACTED = "Mail [EMAIL] or pay with [CREDIT_CARD] at [IP_ADDRESS] today."
SECRETS = ("jane", "roe@", "example.org", "4111", "1111", "10.1")


@contextmanager
def pii_app(engine: ScriptedEngine, **pii: object) -> Iterator[TestClient]:
    """The app with these PII settings over the repository's, prompts and outputs logged."""
    settings = fake_settings(rate_limit={"enabled": False}, pii=pii, logging={"log_prompts": True})
    with running_app(engine, settings) as (_, client):
        yield client


@pytest.fixture
def logged(engine: ScriptedEngine) -> Iterator[TestClient]:
    with pii_app(engine) as client:
        yield client


@pytest.fixture
def blocking(engine: ScriptedEngine) -> Iterator[TestClient]:
    with pii_app(engine, mode="block", custom_patterns={"ticket": r"\bTCK-\d{4}\b"}) as client:
        yield client


def test_echoed_prompt_is_redacted_before_the_model_sees_it(api: TestClient, engine: ScriptedEngine) -> None:
    prompt = "Reply to jane.roe@example.org or call 555-867-5309 about card 4111 1111 1111 1111."
    body = api.post("/v1/generate", json={"prompt": prompt, "max_tokens": 2}).json()
    assert body["prompt"] == "Reply to [EMAIL] or call [PHONE] about card [CREDIT_CARD]."
    assert decode_prompt(engine.submitted[-1]) == body["prompt"]
    for entity in ("email", "phone", "credit_card"):
        assert metric_value(api, "llm_pii_redactions_total", entity=entity) == 1


def test_chat_history_keeps_only_the_redacted_text(api: TestClient, engine: ScriptedEngine) -> None:
    turn = {"messages": [{"role": "user", "content": "I am at 10.1.2.3, ssn 123-45-6789"}], "session_id": "pii"}
    assert api.post("/v1/chat", json=turn).status_code == 200
    stored = api.get("/v1/chat/sessions/pii").json()["messages"]
    assert stored[0]["content"] == "I am at [IP_ADDRESS], ssn [US_SSN]"
    assert "123-45" not in decode_prompt(engine.submitted[-1])


@pytest.mark.parametrize("piece", [1, 2, 3, 5])
def test_output_is_redacted_streamed_or_not(api: TestClient, engine: ScriptedEngine, piece: int) -> None:
    """Each token is `piece` characters: the e-mail, card and address arrive split over many tokens."""
    engine.reply = lambda prompt: LEAKY
    engine.split = lambda text: [text[i : i + piece] for i in range(0, len(text), piece)]
    body = {"prompt": "Where do I pay?", "max_tokens": 1000, "temperature": 0.5}  # sampled: never a cache hit
    whole = api.post("/v1/generate", json=body).json()["generated_text"]
    with api.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        events = [(event, json.loads(data)) for event, data in iter_sse(response) if event != "comment"]
    pieces = [data["text"] for event, data in events if event == "token"]
    assert whole == "".join(pieces) == events[-1][1]["generated_text"] == REDACTED
    for index in range(len(pieces)):
        assert REDACTED.startswith("".join(pieces[: index + 1]))  # no text is ever sent that is not in the end
    assert not any(secret in sent for sent in pieces for secret in SECRETS)
    assert len(pieces) > 5  # still streamed as it comes, not held to the end


def test_output_redaction_is_counted(api: TestClient, engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: LEAKY
    api.post("/v1/generate", json={"prompt": "Where do I pay?"})
    for entity in ("email", "credit_card", "ip_address"):
        assert metric_value(api, "llm_pii_redactions_total", entity=entity) == 1


def test_every_protocol_redacts_the_output(api: TestClient, engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: LEAKY
    chat = {"messages": [{"role": "user", "content": "Where?"}]}
    answers = [
        api.post("/v1/chat", json=chat).json()["message"]["content"],
        api.post("/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"],
        api.post("/v1/completions", json={"prompt": "Where?"}).json()["choices"][0]["text"],
        api.post("/generate", json={"inputs": "Where?"}).json()["generated_text"],
        api.post("/v1/responses", json={"input": "Where?"}).json()["output"][0]["content"][0]["text"],
    ]
    assert answers == [REDACTED] * len(answers)


def test_protocol_endpoints_share_the_input_redaction(api: TestClient) -> None:
    prompt = "Forward this to jane.roe@example.org:"
    completion = api.post("/v1/completions", json={"model": "x", "prompt": prompt, "max_tokens": 2, "echo": True})
    assert completion.json()["choices"][0]["text"].startswith("Forward this to [EMAIL]:")
    tgi = api.post("/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 2, "return_full_text": True}})
    assert tgi.json()["generated_text"].startswith("Forward this to [EMAIL]:")


def test_block_mode_refuses_pii_with_400(blocking: TestClient, engine: ScriptedEngine) -> None:
    response = blocking.post("/v1/generate", json={"prompt": "my ssn is 123-45-6789"})
    assert_error(response, 400, code="pii_detected", param="prompt")
    assert "us_ssn" in response.json()["error"]["message"] and "123-45-6789" not in response.text
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "about TCK-1234"}]}
    streamed = blocking.post("/v1/chat", json={**chat, "stream": True})
    assert_error(streamed, 400, code="pii_detected", param="messages.1.content")
    assert "ticket" in streamed.json()["error"]["message"]
    assert engine.submitted == []
    assert metric_value(blocking, "llm_requests_rejected_total", reason="pii") == 2
    assert blocking.post("/v1/generate", json={"prompt": "nothing personal"}).status_code == 200


def test_block_mode_still_redacts_the_output(blocking: TestClient, engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: "Your ticket is TCK-9876."
    assert blocking.post("/v1/generate", json={"prompt": "My ticket?"}).json()["generated_text"] == (
        "Your ticket is [TICKET]."
    )


def test_logged_prompts_and_outputs_are_redacted(
    logged: TestClient, engine: ScriptedEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.generation")
    engine.reply = lambda prompt: LEAKY
    prompt = "Bill jane.roe@example.org please."
    assert (
        logged.post(
            "/v1/generate",
            json={"prompt": prompt},
        ).status_code
        == 200
    )
    [finished] = [vars(r) for r in caplog.records if r.getMessage() == "generation finished"]
    assert finished["prompt"] == "Bill [EMAIL] please." and finished["output"] == REDACTED


def test_prompts_are_redacted_in_logs_even_when_the_model_sees_them(
    engine: ScriptedEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.generation")
    with pii_app(engine, redact_input=False, redact_output=False) as client:
        engine.reply = lambda prompt: "Mail jane.roe@example.org back."
        body = client.post("/v1/generate", json={"prompt": "Call 555-867-5309."}).json()
        assert body["prompt"] == "Call 555-867-5309." == decode_prompt(engine.submitted[-1])
        assert body["generated_text"] == "Mail jane.roe@example.org back."
    [finished] = [vars(r) for r in caplog.records if r.getMessage() == "generation finished"]
    assert finished["prompt"] == "Call [PHONE]." and finished["output"] == "Mail [EMAIL] back."


def test_prompts_are_not_logged_unless_asked(api: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    api.post("/v1/generate", json={"prompt": "zebra-quokka-77 tell me a story"})
    assert caplog.records and not any("zebra-quokka" in f"{r.getMessage()} {vars(r)}" for r in caplog.records)
