"""The request schemas say what the validators enforce: each pattern published in the JSON
schema accepts exactly the texts the pydantic validators accept."""

from __future__ import annotations

import re

import jsonschema_rs
import pytest
from pydantic import TypeAdapter, ValidationError

from app.api.native.models import WHITESPACE_CLASS, NonBlankText, StopText, Text

SAMPLES = ["", " ", "\t\n", "\u3000", "\x1c", "\x85", "\ufeff", "\u200b", "a", " a ", "x\n", "\u00a0b", "\x00", "a\x00"]


def test_the_whitespace_class_is_what_str_strip_removes() -> None:
    # Every character str.isspace() knows lies in the Basic Multilingual Plane.
    blank = re.compile(f"[{WHITESPACE_CLASS}]")
    for code in range(0x10000):
        char = chr(code)
        assert bool(blank.fullmatch(char)) == char.isspace(), hex(code)


@pytest.mark.parametrize("text_type", [Text, NonBlankText, StopText], ids=["Text", "NonBlankText", "StopText"])
def test_the_published_schema_accepts_exactly_what_the_validators_accept(text_type: object) -> None:
    adapter: TypeAdapter[str] = TypeAdapter(text_type)
    schema = jsonschema_rs.validator_for(adapter.json_schema())
    for sample in SAMPLES:
        try:
            adapter.validate_python(sample)
            accepted = True
        except ValidationError:
            accepted = False
        assert schema.is_valid(sample) == accepted, repr(sample)
