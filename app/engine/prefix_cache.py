"""The KV cache of recently finished sequences, so that a prompt extending one is not prefilled again.

A chat's next turn is its last prompt, the answer and a new message: all but the new part
was already through the model. Entries are keyed by their tokens, not by any session: the
engine knows none, and any prompt that starts like a cached sequence (the same system
prompt and history, a retried request) may reuse the KV of what they have in common. The
KV of a common prefix is the same whatever follows it, so the longest common prefix counts
even where the rest differs (an answer that a later prompt spells with other tokens).

Bounded in bytes of KV tensors, least recently used first out. Lives on the inference
thread; `stats()` may be read from elsewhere (plain integers).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count
from typing import TYPE_CHECKING

from app.engine.types import PrefixCacheStats

if TYPE_CHECKING:
    import torch

LayerKV = list[tuple["torch.Tensor", "torch.Tensor"]]
"""One sequence's keys and values per layer, each `[1, heads, tokens, head_dim]`."""


@dataclass(frozen=True)
class _Entry:
    tokens: tuple[int, ...]
    layers: LayerKV
    nbytes: int


@dataclass(frozen=True)
class CachedPrefix:
    """The KV of a prompt's first `length` tokens: views of a cached entry, to be read, never written."""

    length: int
    layers: LayerKV


class PrefixCache:
    def __init__(self, capacity_bytes: int, min_tokens: int = 32) -> None:
        self._capacity = capacity_bytes
        self._min_tokens = max(1, min_tokens)
        """Shorter common prefixes are not worth a prompt of its own in the prefill."""
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        """Least recently used first."""
        self._keys = count()
        self._bytes = 0
        self._hits = 0
        self._hit_tokens = 0

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    def usable(self, prompt: Sequence[int]) -> int:
        """Tokens of `prompt` whose KV is cached (0: too few to reuse). Changes nothing."""
        found = self._longest(prompt)
        return found[1] if found else 0

    def claim(self, prompt: Sequence[int]) -> CachedPrefix | None:
        """The cached KV of the longest usable prefix of `prompt`, counted as a hit; None if none."""
        found = self._longest(prompt)
        if found is None:
            return None
        key, length = found
        self._entries.move_to_end(key)
        self._hits += 1
        self._hit_tokens += length
        layers = [(keys[..., :length, :], values[..., :length, :]) for keys, values in self._entries[key].layers]
        return CachedPrefix(length, layers)

    def store(self, tokens: Sequence[int], nbytes: int, snapshot: Callable[[], LayerKV]) -> bool:
        """Keep the KV of `tokens` (`nbytes` in all), evicting the least recently used as needed.

        `snapshot` copies it out of the batch, called only if the entry is kept: not when it
        is too short or too large, or an entry already holds these tokens and more. Entries
        that are prefixes of `tokens` go: the new one answers every prompt they would.
        """
        tokens = tuple(tokens)
        if len(tokens) < self._min_tokens or nbytes > self._capacity:
            return False
        for key, entry in list(self._entries.items()):
            if _starts_with(entry.tokens, tokens):
                self._entries.move_to_end(key)
                return False
            if _starts_with(tokens, entry.tokens):
                self._drop(key)
        while self._entries and self._bytes + nbytes > self._capacity:
            self._drop(next(iter(self._entries)))
        self._entries[next(self._keys)] = _Entry(tokens, snapshot(), nbytes)
        self._bytes += nbytes
        return True

    def clear(self) -> int:
        """Forget every entry (their memory is needed elsewhere); returns the bytes they held."""
        freed = self._bytes
        self._entries.clear()
        self._bytes = 0
        return freed

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            entries=len(self._entries), bytes=self._bytes, hits=self._hits, hit_tokens=self._hit_tokens
        )

    def _longest(self, prompt: Sequence[int]) -> tuple[int, int] | None:
        """(entry key, usable length) of the entry sharing the longest prefix with `prompt`.

        At most all but the prompt's last token: that one is fed to get the next token's logits.
        Ties go to the most recently used entry."""
        limit = len(prompt) - 1
        if limit < self._min_tokens:
            return None
        best: tuple[int, int] | None = None
        for key, entry in reversed(self._entries.items()):
            if entry.tokens[0] != prompt[0] or (best is not None and len(entry.tokens) <= best[1]):
                continue
            length = _common_prefix(entry.tokens, prompt, limit)
            if length >= self._min_tokens and (best is None or length > best[1]):
                best = (key, length)
        return best

    def _drop(self, key: int) -> None:
        self._bytes -= self._entries.pop(key).nbytes


def _starts_with(tokens: tuple[int, ...], prefix: tuple[int, ...]) -> bool:
    return len(tokens) >= len(prefix) and tokens[: len(prefix)] == prefix


def _common_prefix(cached: tuple[int, ...], prompt: Sequence[int], limit: int) -> int:
    """Length of the common prefix, at most `limit`: whole slices compared first (C speed), then halved."""
    low, high = 0, min(len(cached), len(prompt), limit)
    head = tuple(prompt[:high])
    if cached[:high] == head:
        return high
    while low < high:  # the first `low` tokens agree; the common prefix is at most `high` long
        middle = (low + high + 1) // 2
        if cached[:middle] == head[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
