"""Prefill of newly admitted sequences: their prompts left-padded together, fed in chunks;
or one prompt alone after the cached KV of its beginning.

A chunk is bounded in tokens (rows x columns), so a long prompt is spread over several
scheduler iterations and the running batch decodes between its chunks instead of stalling.
"""

from __future__ import annotations

from typing import Any

import torch

from app.engine.kv_batch import KVBatch


class PrefillGroup:
    """Call `step()` until it returns the logits after each prompt's last token."""

    def __init__(self, prompts: list[list[int]], chunk_tokens: int, device: torch.device) -> None:
        width = max(len(prompt) for prompt in prompts)
        self._ids = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        self._valid = torch.zeros_like(self._ids)
        for row, prompt in enumerate(prompts):
            self._ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            self._valid[row, width - len(prompt) :] = 1
        self._chunk = max(1, chunk_tokens // len(prompts))
        self._fed = 0
        self.kv = KVBatch.empty(len(prompts), device)

    @classmethod
    def continuing(cls, prefix: KVBatch, rest: list[int], chunk_tokens: int) -> PrefillGroup:
        """One prompt whose first tokens' KV is `prefix` (reused from the prefix cache): only
        `rest` is fed, at the positions after the prefix."""
        group = cls([rest], chunk_tokens, prefix.mask.device)
        group.kv = prefix
        return group

    @property
    def rows(self) -> int:
        return int(self._ids.shape[0])

    def step(self, model: Any) -> torch.Tensor | None:
        """Feed the next chunk of columns; the logits [rows, vocab] once all are fed, else None."""
        end = min(self._ids.shape[1], self._fed + self._chunk)
        logits = self.kv.forward(model, self._ids[:, self._fed : end], self._valid[:, self._fed : end])
        self._fed = end
        return logits if end == self._ids.shape[1] else None


def group_size(prompt_lengths: list[int], token_budget: int, max_rows: int) -> int:
    """How many of the first prompts to prefill together: as many as fit the budget once padded.

    The first always goes, alone if it is longer than the budget (it is then chunked).
    """
    size, width = 1, prompt_lengths[0]
    while size < min(len(prompt_lengths), max_rows):
        wider = max(width, prompt_lengths[size])
        if (size + 1) * wider > token_budget:
            break
        size, width = size + 1, wider
    return size
