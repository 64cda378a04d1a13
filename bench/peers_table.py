"""The peers table: one row per server, tokens/s and TTFT p50 per concurrency level, then the ratios.

Kept apart from the measuring so that its layout and arithmetic are tested without a server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.harness import RequestResult, percentile


@dataclass(frozen=True)
class LevelStats:
    concurrency: int
    tokens_per_s: float
    ttft_p50_s: float
    load: float
    """The 1-minute load average just before the level started."""
    errors: int = 0
    short: int = 0
    """Requests that finished without error but with fewer or more tokens than asked for."""

    @classmethod
    def of(cls, concurrency: int, wall_s: float, results: list[RequestResult], tokens: int, load: float) -> LevelStats:
        ok = [result for result in results if result.error is None]
        return cls(
            concurrency=concurrency,
            tokens_per_s=sum(result.tokens for result in ok) / wall_s,
            ttft_p50_s=percentile([result.ttft_s for result in ok], 50),
            load=load,
            errors=len(results) - len(ok),
            short=sum(1 for result in ok if result.tokens != tokens),
        )


@dataclass
class Row:
    label: str
    levels: dict[int, LevelStats] = field(default_factory=dict)
    ours: bool = False
    """This project's server (ratio rows compare each of ours with each peer)."""


def _cell(value: float, width: int, digits: int, suffix: str = "") -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width - len(suffix)}.{digits}f}{suffix}"


def header(levels: list[int], width: int) -> str:
    cells = "".join(f" {f'c={level} tok/s':>11} {'ttft50':>7}" for level in levels)
    return f"{'server':<{width}}{cells}  load before each level"


def row_line(row: Row, levels: list[int], width: int) -> str:
    cells = ""
    for level in levels:
        stats = row.levels.get(level)
        rate = stats.tokens_per_s if stats else math.nan
        ttft = stats.ttft_p50_s if stats else math.nan
        cells += f" {_cell(rate, 11, 1)} {_cell(ttft, 7, 3)}"
    loads = "/".join(f"{row.levels[level].load:.2f}" for level in levels if level in row.levels)
    return f"{row.label:<{width}}{cells}  {loads}"


def ratio_label(mine: Row, theirs: Row) -> str:
    return f"{mine.label} / {theirs.label}"


def ratio_line(mine: Row, theirs: Row, levels: list[int], width: int) -> str:
    """Ours over the peer at each level: tokens/s (above 1: ours faster) and TTFT p50 (below 1: ours sooner)."""
    cells = ""
    for level in levels:
        a, b = mine.levels.get(level), theirs.levels.get(level)
        rate = a.tokens_per_s / b.tokens_per_s if a and b and b.tokens_per_s else math.nan
        ttft = a.ttft_p50_s / b.ttft_p50_s if a and b and b.ttft_p50_s else math.nan
        cells += f" {_cell(rate, 11, 2, 'x')} {_cell(ttft, 7, 2, 'x')}"
    return f"{ratio_label(mine, theirs):<{width}}{cells}"


def table(rows: list[Row], levels: list[int]) -> list[str]:
    ours = [row for row in rows if row.ours]
    peers = [row for row in rows if not row.ours]
    pairs = [(mine, theirs) for mine in ours for theirs in peers]
    width = max([len("server"), *(len(row.label) for row in rows), *(len(ratio_label(*pair)) for pair in pairs)])
    lines = [header(levels, width), *(row_line(row, levels, width) for row in rows)]
    if pairs:
        lines.append("ratios (tok/s: above 1x ours is faster; ttft50: below 1x ours answers sooner)")
        lines += [ratio_line(mine, theirs, levels, width) for mine, theirs in pairs]
    lines += [
        f"{row.label} at c={stats.concurrency}: {stats.errors} errors, {stats.short} answers not of the asked length"
        for row in rows
        for stats in row.levels.values()
        if stats.errors or stats.short
    ]
    return lines
