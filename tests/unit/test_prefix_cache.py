"""The prefix cache's index: longest common prefix, LRU by bytes, what it refuses to keep."""

from __future__ import annotations

import torch

from app.engine.prefix_cache import LayerKV, PrefixCache


def kv(tokens: int, layers: int = 2) -> LayerKV:
    """Keys/values whose every column holds its own position: a reused slice shows where it ends."""
    column = torch.arange(tokens, dtype=torch.float32).view(1, 1, tokens, 1)
    return [(column.clone(), column.clone() + 0.5) for _ in range(layers)]


def nbytes(layers: LayerKV) -> int:
    return sum(tensor.numel() * tensor.element_size() for pair in layers for tensor in pair)


def cache_with(cache: PrefixCache, *sequences: list[int]) -> PrefixCache:
    for tokens in sequences:
        layers = kv(len(tokens))
        assert cache.store(tokens, nbytes(layers), lambda layers=layers: layers)
    return cache


def test_a_prompt_extending_a_cached_sequence_reuses_all_of_it() -> None:
    history = list(range(100, 140))
    cache = cache_with(PrefixCache(1 << 20, min_tokens=4), history)
    hit = cache.claim([*history, 7, 8, 9])
    assert hit is not None and hit.length == 40
    keys, values = hit.layers[0]
    assert keys.shape == (1, 1, 40, 1) and keys[0, 0, -1, 0].item() == 39 and values[0, 0, 0, 0].item() == 0.5
    assert cache.stats().hits == 1 and cache.stats().hit_tokens == 40


def test_the_longest_common_prefix_wins_even_where_the_rest_differs() -> None:
    """A later prompt may spell an answer with other tokens: what both share is still valid KV."""
    shared = list(range(50))
    cache = cache_with(PrefixCache(1 << 20, min_tokens=4), [*shared[:10], 999, 998], [*shared[:30], 1, 2, 3])
    hit = cache.claim([*shared, 5])
    assert hit is not None and hit.length == 30
    assert cache.usable([*shared[:20], 4, 4]) == 20


def test_the_prompts_last_token_is_always_fed() -> None:
    """Its logits give the first new token, so at most all but the last token come from the cache."""
    tokens = list(range(40))
    cache = cache_with(PrefixCache(1 << 20, min_tokens=4), tokens)
    hit = cache.claim(tokens[:25])
    assert hit is not None and hit.length == 24 and hit.layers[0][0].shape[-2] == 24
    assert cache.usable(tokens) == 39


def test_short_or_unrelated_prompts_miss() -> None:
    cache = cache_with(PrefixCache(1 << 20, min_tokens=8), list(range(40)))
    assert cache.claim([*range(5), 77, 78, 79, 80, 81]) is None  # 5 tokens in common: below min_tokens
    assert cache.claim(list(range(1, 40))) is None  # differs from the first token
    assert cache.claim(list(range(6))) is None
    assert cache.claim([]) is None
    assert cache.stats().hits == 0 and cache.stats().hit_tokens == 0


def test_least_recently_used_entries_go_when_the_bytes_run_out() -> None:
    first, second, third = (list(range(start, start + 20)) for start in (0, 100, 200))
    size = nbytes(kv(20))
    cache = cache_with(PrefixCache(2 * size, min_tokens=4), first, second)
    assert cache.claim([*first, 1]) is not None  # first is now the most recently used
    cache_with(cache, third)
    assert cache.usable([*second, 1]) == 0
    assert cache.usable([*first, 1]) == 20 and cache.usable([*third, 1]) == 20
    assert cache.stats().entries == 2 and cache.stats().bytes == 2 * size


def test_an_entry_larger_than_the_whole_cache_is_not_copied() -> None:
    calls: list[int] = []
    cache = PrefixCache(100, min_tokens=4)

    def snapshot() -> LayerKV:
        calls.append(1)
        return kv(20)

    assert not cache.store(list(range(20)), 101, snapshot)
    assert calls == [] and cache.stats().entries == 0


def test_at_zero_bytes_it_is_off_and_keeps_nothing() -> None:
    cache = PrefixCache(0)
    assert not cache.enabled
    assert not cache.store(list(range(40)), 1, lambda: kv(40))
    assert cache.claim(list(range(50))) is None and cache.stats().bytes == 0


def test_a_chats_next_turn_replaces_the_entry_it_extends() -> None:
    """Turn N+1's sequence holds turn N's: keeping both would pay twice for the same prefix."""
    turn_one = list(range(30))
    turn_two = [*turn_one, *range(500, 530)]
    cache = cache_with(PrefixCache(1 << 20, min_tokens=4), turn_one, turn_two)
    assert cache.stats().entries == 1 and cache.stats().bytes == nbytes(kv(60))
    hit = cache.claim([*turn_two, 1])
    assert hit is not None and hit.length == 60


def test_a_sequence_already_covered_by_an_entry_is_not_stored_again() -> None:
    longer = list(range(60))
    cache = cache_with(PrefixCache(1 << 20, min_tokens=4), longer)
    assert not cache.store(longer[:40], 1, lambda: kv(40))
    assert not cache.store(longer, 1, lambda: kv(60))
    assert cache.stats().entries == 1


def test_too_short_sequences_are_not_stored() -> None:
    cache = PrefixCache(1 << 20, min_tokens=32)
    assert not cache.store(list(range(31)), 1, lambda: kv(31))
    assert cache.store(list(range(32)), 1, lambda: kv(32))


def test_ties_go_to_the_most_recently_used_entry() -> None:
    shared = list(range(20))
    older, newer = [*shared, 1000, 1001], [*shared, 2000, 2001]
    cache = PrefixCache(1 << 20, min_tokens=4)
    for tokens, marker in ((older, 1.0), (newer, 2.0)):
        layers = [(torch.full((1, 1, 22, 1), marker), torch.full((1, 1, 22, 1), marker))]
        cache.store(tokens, nbytes(layers), lambda layers=layers: layers)
    hit = cache.claim([*shared, 3000, 3001])
    assert hit is not None and hit.length == 20 and hit.layers[0][0][0, 0, 0, 0].item() == 2.0
