"""Incremental detokenisation: text deltas that are right across word pieces and UTF-8 splits."""

from __future__ import annotations

from typing import Any

_PROMPT_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    """Decodes a window of context + new ids, emitting only the new, complete characters.

    Decoding a token alone loses leading spaces of sentencepiece tokenizers and splits
    multi-byte characters, so each delta is the difference of two decodes sharing a prefix.
    """

    def __init__(self, tokenizer: Any, prompt_ids: tuple[int, ...]) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = list(prompt_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or (full.endswith("\ufffd") and not final):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return full[len(prefix) :]

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text
