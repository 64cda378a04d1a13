"""Token budgets over HTTP: reserve prompt + max_tokens, return the unused rest, the daily quota
at UTC midnight, cache hits for free; on a clock only the test moves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.errors import EngineOverloaded
from app.core.token_budget import DAY_S
from tests.api.conftest import FakeClock, fake_settings, running_app
from tests.conftest import assert_error
from tests.fakes import ScriptedEngine

ALICE = {"X-API-Key": "alice-secret-key"}
BOB = {"X-API-Key": "bob-secret-key"}
MIDNIGHT = 20_000 * DAY_S
PROMPT = "abcd"
"""Four tokens for the fake's byte tokenizer."""


def body(max_tokens: int, **fields: Any) -> dict[str, Any]:
    return {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.7, **fields}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(MIDNIGHT + 100)


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine(reply=lambda prompt: " w" * 300)


@pytest.fixture
def budgeted(engine: ScriptedEngine, clock: FakeClock) -> Iterator[TestClient]:
    """alice: 200 tokens per minute; bob: the default, 1000 per minute and 100 per day."""
    settings = fake_settings(
        security={
            "api_keys": [
                {"name": "alice", "key": "alice-secret-key", "tokens_per_minute": 200},
                {"name": "bob", "key": "bob-secret-key", "tokens_per_day": 100},
            ]
        },
        rate_limit={"requests_per_minute": 6000, "burst_size": 1000, "tokens_per_minute": 1000},
    )
    with running_app(engine, settings, clock=clock) as (_, client):
        yield client


def remaining(response: Any) -> int:
    return int(response.headers["x-ratelimit-remaining-tokens"])


def test_reserves_are_admitted_until_one_no_longer_fits_then_429_until_it_does(
    budgeted: TestClient, clock: FakeClock
) -> None:
    for expected_left in (150, 100, 50, 0):
        answer = budgeted.post("/v1/generate", headers=ALICE, json=body(46))  # 4 + 46 reserved, all used
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["total_tokens"] == 50
        assert answer.headers["x-ratelimit-limit-tokens"] == "200"
        assert remaining(answer) == expected_left
    refused = budgeted.post("/v1/generate", headers=ALICE, json=body(46))
    assert_error(refused, 429, "token_rate_limited")
    assert refused.headers["retry-after"] == "15"  # 50 tokens at 200 a minute
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert refused.headers["x-ratelimit-reset-tokens"] == "60"
    assert "x-ratelimit-remaining" in refused.headers  # the request bucket's headers ride along
    clock.now += 14
    assert budgeted.post("/v1/generate", headers=ALICE, json=body(46)).headers["retry-after"] == "1"
    clock.now += 1
    assert budgeted.post("/v1/generate", headers=ALICE, json=body(46)).status_code == 200


def test_the_unused_reserve_comes_back_when_the_answer_ends(budgeted: TestClient, engine: ScriptedEngine) -> None:
    engine.reply = lambda prompt: " w" * 10
    small = budgeted.post("/v1/generate", headers=ALICE, json=body(100))  # 104 reserved, 14 used
    assert small.json()["usage"]["total_tokens"] == 14
    assert remaining(small) == 96  # as reserved
    large = budgeted.post("/v1/generate", headers=ALICE, json=body(176))  # 180: fits only if 90 came back
    assert large.status_code == 200, large.text
    assert remaining(large) == 6


def test_a_failed_or_refused_generation_gives_back_what_it_did_not_use(
    budgeted: TestClient, engine: ScriptedEngine
) -> None:
    engine.fail_on_submit = EngineOverloaded("queue full")
    assert budgeted.post("/v1/generate", headers=ALICE, json=body(96)).status_code == 503
    engine.fail_on_submit = None
    engine.fail_after_tokens = 2
    assert budgeted.post("/v1/generate", headers=ALICE, json=body(96)).status_code == 500
    engine.fail_after_tokens = None
    # Refused by the engine: nothing charged; failed after 2 tokens: 4 + 2 charged.
    assert remaining(budgeted.post("/v1/generate", headers=ALICE, json=body(1))) == 200 - 6 - 5


def test_streams_reserve_before_the_first_byte(budgeted: TestClient) -> None:
    for _ in range(4):
        assert budgeted.post("/v1/generate", headers=ALICE, json=body(46, stream=True)).status_code == 200
    assert_error(budgeted.post("/v1/generate", headers=ALICE, json=body(46, stream=True)), 429, "token_rate_limited")


def test_a_reserve_larger_than_the_whole_budget_is_a_400_that_says_so(budgeted: TestClient) -> None:
    refused = budgeted.post("/v1/generate", headers=ALICE, json=body(197))
    assert_error(refused, 400, "tokens_over_budget", "max_tokens")
    assert "201 tokens" in refused.json()["error"]["message"]
    assert "200 per minute" in refused.json()["error"]["message"]


def test_cache_hits_cost_no_tokens(budgeted: TestClient) -> None:
    greedy = body(46, temperature=0)
    first = budgeted.post("/v1/generate", headers=ALICE, json=greedy)
    assert remaining(first) == 150
    for _ in range(6):  # six more full reserves would not fit
        again = budgeted.post("/v1/generate", headers=ALICE, json=greedy)
        assert again.json()["cached"] is True
        assert remaining(again) == 150


def test_the_daily_quota_is_spent_until_utc_midnight(budgeted: TestClient, clock: FakeClock) -> None:
    clock.now = MIDNIGHT + DAY_S - 30
    assert budgeted.post("/v1/generate", headers=BOB, json=body(56)).status_code == 200  # 60 of 100
    refused = budgeted.post("/v1/generate", headers=BOB, json=body(56))
    assert_error(refused, 429, "quota_exceeded")
    assert refused.headers["retry-after"] == "30"
    assert refused.headers["x-ratelimit-limit-tokens"] == "1000"  # bob's minute budget is the default
    clock.now += 30
    assert budgeted.post("/v1/generate", headers=BOB, json=body(56)).status_code == 200


def test_openai_routes_share_the_budget(budgeted: TestClient) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 150, "temperature": 0.7}
    answer = budgeted.post("/v1/chat/completions", headers=ALICE, json=chat)
    assert answer.status_code == 200, answer.text
    used = answer.json()["usage"]["total_tokens"]
    assert used == answer.json()["usage"]["prompt_tokens"] + 150
    refused = budgeted.post("/v1/chat/completions", headers=ALICE, json=chat)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "token_rate_limited"
    assert remaining(refused) == 200 - used


@pytest.mark.parametrize(
    ("path", "request_body"),
    [
        ("/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": 150, "do_sample": True}}),
        ("/v1/responses", {"input": PROMPT, "max_output_tokens": 150, "temperature": 0.7}),
    ],
)
def test_tgi_and_responses_routes_pay_from_the_same_budget(
    budgeted: TestClient, path: str, request_body: dict[str, Any]
) -> None:
    assert budgeted.post(path, headers=ALICE, json=request_body).status_code == 200
    refused = budgeted.post(path, headers=ALICE, json=request_body)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) > 0
