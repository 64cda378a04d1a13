"""bench.peers and its table: the rows' settings, the quiet-machine check, the ratios; no server."""

from __future__ import annotations

import argparse
import math

import pytest

from bench.harness import RequestResult
from bench.peers import OursSpec, default_max_load, parse_args, parse_ours, wait_for_quiet
from bench.peers_table import LevelStats, Row, table


def test_ours_row_takes_environment_names_and_settings_paths() -> None:
    spec = parse_ours("bf16:MODEL__QUANTIZATION=bf16, engine.compile=true")
    assert spec == OursSpec("bf16", {"MODEL__QUANTIZATION": "bf16", "ENGINE__COMPILE": "true"})


def test_ours_row_without_settings_is_the_default_configuration() -> None:
    assert parse_ours("plain") == OursSpec("plain", {})


@pytest.mark.parametrize("text", [":MODEL__DTYPE=bfloat16", "x:MODEL__DTYPE", "x:model dtype=1", "x:lower=1"])
def test_ours_row_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_ours(text)


def test_arguments_add_rows_after_the_default_one() -> None:
    args = parse_args(["--ours", "a:MODEL__DTYPE=bfloat16", "--ours", "b", "--levels", "1,16", "--peers", "f16"])
    assert [spec.label for spec in args.ours] == ["a", "b"]
    assert args.levels == [1, 16]
    assert args.peers == ["f16"]
    assert parse_args(["--peers", ""]).peers == []


def test_arguments_refuse_two_rows_of_one_label() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--ours", "ours:MODEL__DTYPE=bfloat16"])


def test_quiet_threshold_follows_the_cores() -> None:
    assert default_max_load(2) == 1.5
    assert default_max_load(8) == 6.0
    assert default_max_load(None) == 0.75


class FakeMachine:
    """A load average that moves to the next of `loads` at every sleep, and a clock that the sleeps advance."""

    def __init__(self, loads: list[float]) -> None:
        self.loads = loads
        self.now = 0.0
        self.said: list[str] = []

    def loadavg(self) -> tuple[float, float, float]:
        return (self.loads[0], 0.0, 0.0)

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if len(self.loads) > 1:
            self.loads.pop(0)

    def wait(self, max_load: float, max_wait_s: float) -> float:
        return wait_for_quiet(max_load, max_wait_s, self.loadavg, self.sleep, lambda: self.now, self.said.append)


def test_quiet_machine_is_measured_at_once() -> None:
    machine = FakeMachine([0.4])
    assert machine.wait(1.5, 60) == 0.4
    assert machine.now == 0.0
    assert machine.said == []


def test_busy_machine_is_waited_for_until_quiet() -> None:
    machine = FakeMachine([3.0, 2.0, 1.2, 0.5])
    assert machine.wait(1.5, 60) == 1.2
    assert 0 < machine.now <= 60
    assert len(machine.said) == 1


def test_wait_for_quiet_is_bounded_and_says_so() -> None:
    machine = FakeMachine([4.0])
    assert machine.wait(1.5, 12) == 4.0
    assert machine.now == pytest.approx(12)
    assert "measuring anyway" in machine.said[-1]


def test_level_stats_count_only_finished_requests() -> None:
    results = [
        RequestResult(ttft_s=0.1, tokens=64),
        RequestResult(ttft_s=0.3, tokens=64),
        RequestResult(ttft_s=0.2, tokens=60),
        RequestResult(error="HTTP 500"),
    ]
    stats = LevelStats.of(4, wall_s=2.0, results=results, tokens=64, load=1.1)
    assert stats.tokens_per_s == 94.0
    assert stats.ttft_p50_s == 0.2
    assert (stats.errors, stats.short, stats.load) == (1, 1, 1.1)


def _row(label: str, rates: dict[int, float], ours: bool = False) -> Row:
    return Row(label, {c: LevelStats(c, rate, ttft_p50_s=rate / 100, load=1.0) for c, rate in rates.items()}, ours)


def test_table_has_a_row_per_server_and_a_ratio_per_pair() -> None:
    rows = [
        _row("ours", {1: 20.0, 16: 200.0}, ours=True),
        _row("ours bf16", {1: 30.0, 16: 300.0}, ours=True),
        _row("llama.cpp f32", {1: 40.0, 16: 100.0}),
    ]
    lines = table(rows, [1, 16])
    assert lines[0].split()[:5] == ["server", "c=1", "tok/s", "ttft50", "c=16"]
    assert lines[1].split()[:5] == ["ours", "20.0", "0.200", "200.0", "2.000"]
    ratios = {line.split(" / ")[0]: line.split()[-4:] for line in lines if " / " in line}
    assert ratios == {"ours": ["0.50x", "0.50x", "2.00x", "2.00x"], "ours bf16": ["0.75x", "0.75x", "3.00x", "3.00x"]}
    assert lines[1].index("20.0") + len("20.0") == lines[0].index("tok/s") + len("tok/s")  # right-aligned


def test_table_marks_missing_levels_and_reports_errors() -> None:
    broken = Row("llama.cpp f16", {1: LevelStats(1, 0.0, math.nan, load=2.0, errors=4)})
    lines = table([_row("ours", {1: 20.0, 4: 80.0}, ours=True), broken], [1, 4])
    assert lines[2].split()[2:] == ["0.0", "-", "-", "-", "2.00"]
    assert "llama.cpp f16 at c=1: 4 errors" in lines[-1]
