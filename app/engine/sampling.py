"""Next-token choice from logits: repetition penalty, temperature, top-k, top-p, seeded sampling."""

from __future__ import annotations

import math

import torch

from app.engine.types import SamplingParams


def apply_repetition_penalty(logits: torch.Tensor, seen_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty, as transformers applies it: shrink the scores of tokens already seen."""
    if penalty == 1.0 or seen_ids.numel() == 0:
        return logits
    scores = torch.gather(logits, -1, seen_ids)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(-1, seen_ids, scores)


def without_tokens(logits: torch.Tensor, token_ids: frozenset[int]) -> torch.Tensor:
    """A copy of `logits` (one row or a batch of rows) where `token_ids` can never win."""
    banned = logits.clone()
    banned[..., list(token_ids)] = float("-inf")
    return banned


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        remove = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
        remove[..., 0] = False  # the most likely token stays, however small top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
    return logits


def choose_next_token(
    logits: torch.Tensor,
    params: SamplingParams,
    seen_ids: torch.Tensor,
    generator: torch.Generator | None,
) -> int:
    """Pick one token from a 1-D logits vector."""
    logits = apply_repetition_penalty(logits.float(), seen_ids, params.repetition_penalty)
    if params.greedy:
        return int(torch.argmax(logits, dim=-1).item())
    # A repetition penalty near 0 can push a seen token's score past the float range; inf would
    # become NaN in softmax and fail the whole batch, so it is held at the largest finite score.
    scaled = torch.nan_to_num(logits / params.temperature, posinf=torch.finfo(logits.dtype).max, neginf=-math.inf)
    logits = filter_top_k_top_p(scaled, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=generator).item())


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
