"""Stop sequences and incremental detokenisation: the text a client sees is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from app.engine.detokenizer import IncrementalDetokenizer
from app.engine.stops import StopSequenceFilter


def feed(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    stop_filter = StopSequenceFilter(stops)
    out = []
    for piece in pieces:
        out.append(stop_filter.push(piece))
        if stop_filter.stopped:
            return "".join(out), True
    return "".join(out) + stop_filter.flush(), False


@pytest.mark.parametrize("split", range(1, 12))
def test_stop_split_anywhere_is_never_emitted(split: int) -> None:
    text = "Hello END world"
    pieces = [text[i : i + split] for i in range(0, len(text), split)]
    assert feed(("END",), pieces) == ("Hello ", True)


def test_text_that_only_looks_like_a_stop_start_is_released() -> None:
    assert feed(("STOP",), ["ST", "OR", "Y ", "ST"]) == ("STORY ST", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed(("world", "lo w"), ["Hello world"]) == ("Hel", True)


def test_no_stops_passes_text_through() -> None:
    assert feed((), ["a", "b"]) == ("ab", False)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> object:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! It's 3.14 today.",
        "naïve café — ünïcödé",
        "emoji 🎉🚀 and 日本語のテキスト",
        "  leading\nnew lines\t",
    ],
)
def test_incremental_deltas_join_to_the_full_decode(tokenizer: object, text: str) -> None:
    prompt_ids = tuple(tokenizer("Prompt:")["input_ids"])  # type: ignore[operator]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
    deltas = [detokenizer.push(token_id) for token_id in ids] + [detokenizer.flush()]
    assert "".join(deltas) == tokenizer.decode(ids)  # type: ignore[attr-defined]
    assert all("\ufffd" not in delta for delta in deltas)
