"""Next-token choice at the edges of what the request schemas allow: never an error."""

from __future__ import annotations

import pytest
import torch

from app.engine.sampling import choose_next_token, make_generator, without_tokens
from app.engine.types import SamplingParams

LOGITS = torch.tensor([1.0, 4.0, 2.5, -3.0, 0.5])
TOP = 1


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-40, 1e-6])
def test_a_temperature_near_zero_is_greedy(temperature: float) -> None:
    params = SamplingParams(max_tokens=1, temperature=temperature)
    assert params.greedy
    assert choose_next_token(LOGITS, params, torch.tensor([], dtype=torch.long), None) == TOP


@pytest.mark.parametrize("top_p", [5e-324, 1e-30])
def test_a_top_p_near_zero_keeps_the_most_likely_token(top_p: float) -> None:
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=top_p)
    generator = make_generator(0, torch.device("cpu"))
    assert choose_next_token(LOGITS, params, torch.tensor([], dtype=torch.long), generator) == TOP


@pytest.mark.parametrize("temperature", [1.0, 2.0, 1e-4])
def test_a_repetition_penalty_near_zero_favours_the_seen_tokens(temperature: float) -> None:
    seen = torch.tensor([0, 2])
    params = SamplingParams(max_tokens=1, temperature=temperature, repetition_penalty=5e-324)
    generator = make_generator(0, torch.device("cpu"))
    assert choose_next_token(LOGITS, params, seen, generator) in {0, 2}


def test_banned_tokens_never_win_in_a_row_or_a_batch_and_the_logits_stay_as_they_were() -> None:
    batch = torch.tensor([[0.0, 5.0, 1.0], [3.0, 2.0, 9.0]])
    banned = without_tokens(batch, frozenset({1, 2}))
    assert banned.argmax(dim=-1).tolist() == [0, 0]
    assert without_tokens(batch[1], frozenset({2})).argmax().item() == 0
    assert batch[0, 1] == 5.0
