"""PII detection: real-looking positives, tricky negatives, and streams split at every position."""

from __future__ import annotations

import itertools

import pytest

from app.core.config import PIISettings
from app.core.errors import PIIBlocked
from app.core.pii import PIIGuard, PIIScanner, StreamRedactor, entities_from_settings, luhn_valid

SCANNER = PIIScanner(entities_from_settings(PIISettings(custom_patterns={"employee_id": r"EMP-\d{6}"})))

POSITIVES = [
    ("write to john.doe@example.com today", "write to [EMAIL] today"),
    ("Mail: Anna_B+news@mail.co.uk.", "Mail: [EMAIL]."),
    ("call (555) 123-4567 now", "call [PHONE] now"),
    ("call 555-123-4567", "call [PHONE]"),
    ("call 555.123.4567", "call [PHONE]"),
    ("ring +1 555 123 4567!", "ring [PHONE]!"),
    ("London +44 20 7946 0958", "London [PHONE]"),
    ("card 4111 1111 1111 1111.", "card [CREDIT_CARD]."),
    ("card 4111-1111-1111-1111", "card [CREDIT_CARD]"),
    ("visa 4012888888881881", "visa [CREDIT_CARD]"),
    ("amex 3782 822463 10005", "amex [CREDIT_CARD]"),
    ("mastercard 5555555555554444 ok", "mastercard [CREDIT_CARD] ok"),
    ("ssn 123-45-6789", "ssn [US_SSN]"),
    ("server 192.168.1.10 is down", "server [IP_ADDRESS] is down"),
    ("from 8.8.8.8,", "from [IP_ADDRESS],"),
    ("v6 2001:db8::1 and fe80::1ff:fe23:4567:890a", "v6 [IP_ADDRESS] and [IP_ADDRESS]"),
    ("badge EMP-123456", "badge [EMPLOYEE_ID]"),
    ("a@b.io, 555-123-4567, 123-45-6789", "[EMAIL], [PHONE], [US_SSN]"),
]

NEGATIVES = [
    "the meeting is on 2024-01-15 at 10:30:00",
    "dates 12/25/2024 and 25.12.2024",
    "version 1.2.3, v1.2.3.4 and 2.0.0-rc1",
    "pi is 3.14159 and e is 2.71828",
    "it costs $1,234.56 or 1 234 567 units",
    "order number 1234567890",
    "timestamp 1700000000000",
    "card 4111 1111 1111 1112 fails Luhn",
    "1234 5678 9012 3456 is not a card",
    "0000 0000 0000 0000",
    "ssn 000-12-3456 and 666-12-3456 are invalid",
    "ISBN 978-3-16-148410-0",
    "in 2024-2025 we grew 12.5%",
    "std::vector<int> and a::b",
    "1.2.3.4.5 and 256.1.1.1",
    "call 555 1234",
    "user@localhost has no domain",
    "Python 3.11 on port 8000",
]


@pytest.mark.parametrize(("text", "expected"), POSITIVES)
def test_real_looking_pii_is_redacted(text: str, expected: str) -> None:
    assert SCANNER.redact(text)[0] == expected


@pytest.mark.parametrize("text", NEGATIVES)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert SCANNER.redact(text) == (text, {})


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


def test_counts_per_entity() -> None:
    _, counts = SCANNER.redact("a@b.io c@d.io 555-123-4567")
    assert counts == {"email": 2, "phone": 1}


def stream(text: str, cuts: list[int]) -> str:
    redactor = StreamRedactor(SCANNER)
    bounds = [0, *cuts, len(text)]
    out = "".join(redactor.push(text[a:b]) for a, b in itertools.pairwise(bounds))
    return out + redactor.flush()


@pytest.mark.parametrize("text", [t for t, _ in POSITIVES] + NEGATIVES[:8])
def test_stream_split_anywhere_equals_whole_text(text: str) -> None:
    expected = SCANNER.redact(text)[0]
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert stream(text, [i, j]) == expected, (i, j)
    assert stream(text, list(range(1, len(text)))) == expected  # one character per token


def test_stream_never_releases_part_of_a_card_number() -> None:
    redactor = StreamRedactor(SCANNER)
    released = ""
    for piece in ["My card: ", "4", "111", " 1111", " 11", "11 1", "111", " and more"]:
        released += redactor.push(piece)
        assert "4111" not in released and "111" not in released.replace("[CREDIT_CARD]", "")
    released += redactor.flush()
    assert released == "My card: [CREDIT_CARD] and more"


def test_stream_holds_back_only_the_undecided_tail() -> None:
    redactor = StreamRedactor(SCANNER)
    assert redactor.push("Once upon a time there") == "Once upon a time "
    assert redactor.push(" was a") == "there was "
    assert redactor.flush() == "a"


def guard(**settings: object) -> PIIGuard:
    return PIIGuard(PIISettings.model_validate(settings))


def test_block_mode_refuses_input_naming_entities_not_values() -> None:
    with pytest.raises(PIIBlocked) as raised:
        guard(mode="block").check_input("mail me: a@b.io", "prompt")
    assert raised.value.status_code == 400 and raised.value.param == "prompt"
    assert "email" in raised.value.message and "a@b.io" not in raised.value.message


def test_switches() -> None:
    assert guard(entities={"email": False}).check_input("a@b.io 555-123-4567", "p") == "a@b.io [PHONE]"
    assert guard(redact_input=False).check_input("a@b.io", "p") == "a@b.io"
    with pytest.raises(PIIBlocked):
        guard(redact_input=False, mode="block").check_input("a@b.io", "p")
    assert guard(enabled=False).output_filter() is None
    assert guard(enabled=False).for_log("a@b.io") == "[EMAIL]"  # logged prompts are always redacted


def test_redactions_are_reported() -> None:
    seen: list[dict[str, int]] = []
    pii = PIIGuard(PIISettings(), on_redaction=lambda counts: seen.append(dict(counts)))
    pii.check_input("a@b.io", "prompt")
    redactor = pii.output_filter()
    assert redactor is not None
    redactor.push("call 555-123-4567 ")
    redactor.flush()
    pii.report_output(redactor)
    assert seen == [{"email": 1}, {"phone": 1}]
