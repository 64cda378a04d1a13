"""The in-memory usage store: totals, and today's counts that start afresh at 00:00 UTC."""

from __future__ import annotations

from app.core.usage import DAY_S, MemoryUsageStore, UsageCounts


def test_today_rolls_over_at_utc_midnight_and_the_total_keeps_counting() -> None:
    now = [20_000 * DAY_S - 1.0]
    store = MemoryUsageStore(wall_clock=lambda: now[0])
    store.add("alice", UsageCounts(requests=1, prompt_tokens=5, completion_tokens=7))
    store.add("alice", UsageCounts(rate_limited=1))
    store.add("bob", UsageCounts(requests=1, cached_requests=1))
    yesterday = UsageCounts(requests=1, prompt_tokens=5, completion_tokens=7, rate_limited=1)
    assert store.read("alice") == (yesterday, yesterday)
    now[0] += 1
    assert store.read("alice") == (UsageCounts(), yesterday)
    store.add("alice", UsageCounts(requests=1, completion_tokens=3))
    assert store.read("alice") == (
        UsageCounts(requests=1, completion_tokens=3),
        UsageCounts(requests=2, prompt_tokens=5, completion_tokens=10, rate_limited=1),
    )
    assert store.read("nobody") == (UsageCounts(), UsageCounts())
