"""PII detection and redaction, whole texts and token streams.

Streams are redacted without leaking a match split over several tokens: the `regex`
module's partial matching tells which tail of the pending text could still grow into a
match, and only that tail is held back; everything before it is released at once.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import regex

from app.core.config import PIISettings
from app.core.errors import PIIBlocked

_CONTEXT_CHARS = 8
"""Already released characters kept so that look-behinds see what precedes new text."""


@dataclass(frozen=True)
class Entity:
    name: str
    """Metric label and config key (email, phone, …, or a custom pattern's name)."""
    pattern: regex.Pattern[str]
    is_valid: Callable[[str], bool] | None = None
    """Extra check on a complete match (e.g. Luhn), for what a regex cannot say."""

    @property
    def placeholder(self) -> str:
        return f"[{self.name.upper()}]"


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    entity: Entity


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _is_card_number(text: str) -> bool:
    digits = "".join(c for c in text if c.isdigit())
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)


def _is_phone_number(text: str) -> bool:
    return 10 <= sum(c.isdigit() for c in text) <= 15


def _is_ipv6(text: str) -> bool:
    if not any(c.isdigit() for c in text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"

BUILT_IN_PATTERNS: dict[str, tuple[str, Callable[[str], bool] | None]] = {
    "email": (
        rf"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@{_LABEL}(?:\.{_LABEL})*\.[A-Za-z]{{2,24}}(?![\w-])",
        None,
    ),
    "credit_card": (r"(?<![\w.-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\w-]|\.\d)", _is_card_number),
    "us_ssn": (r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])", None),
    "ip_address": (
        rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)"
        r"|(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])",
        lambda text: "." in text or _is_ipv6(text),
    ),
    "phone": (
        r"(?<![\w+(])(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]|\.\d)"
        r"|(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w-]|\.\d)",
        _is_phone_number,
    ),
}
"""Built-in entities, in order of precedence when two matches start at the same place."""


def entities_from_settings(settings: PIISettings) -> list[Entity]:
    switched_on = settings.entities.model_dump()
    entities = [
        Entity(name, regex.compile(pattern), check)
        for name, (pattern, check) in BUILT_IN_PATTERNS.items()
        if switched_on[name]
    ]
    entities += [Entity(name, regex.compile(pattern)) for name, pattern in settings.custom_patterns.items()]
    return entities


class PIIScanner:
    """Finds PII spans: leftmost first, then longest, then the entity listed first."""

    def __init__(self, entities: Iterable[Entity]) -> None:
        self.entities = tuple(entities)

    def spans(self, text: str, pos: int = 0) -> list[Span]:
        spans, _ = self._scan(text, pos, partial=False)
        return spans

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        return _apply(text, self.spans(text), 0, len(text))

    def scan_stream(self, text: str, pos: int) -> tuple[list[Span], int]:
        """Complete spans that can no longer change, and where the undecided tail begins."""
        return self._scan(text, pos, partial=True)

    def _scan(self, text: str, pos: int, partial: bool) -> tuple[list[Span], int]:
        hold = self._undecided_from(text, pos) if partial else len(text)
        candidates = [
            Span(match.start(), match.end(), entity)
            for entity in self.entities
            for match in entity.pattern.finditer(text, pos)
            if match.end() > match.start() and (entity.is_valid is None or entity.is_valid(match.group()))
        ]
        chosen = _leftmost_longest(candidates, self.entities)
        moved = True
        while moved:
            moved = False
            for span in chosen:
                if span.start < hold < span.end:
                    hold, moved = span.start, True
        return [span for span in chosen if span.end <= hold], hold

    def _undecided_from(self, text: str, pos: int) -> int:
        """The first position whose rest of the text could still be the beginning of a match."""
        for start in range(pos, len(text)):
            for entity in self.entities:
                if entity.pattern.fullmatch(text, start, partial=True) is not None:
                    return start
        return len(text)


def _leftmost_longest(candidates: list[Span], order: tuple[Entity, ...]) -> list[Span]:
    chosen: list[Span] = []
    for span in sorted(candidates, key=lambda s: (s.start, s.start - s.end, order.index(s.entity))):
        if not chosen or span.start >= chosen[-1].end:
            chosen.append(span)
    return chosen


def _apply(text: str, spans: list[Span], start: int, end: int) -> tuple[str, Counter[str]]:
    """Redact text[start:end] with the given spans (all inside it)."""
    parts: list[str] = []
    counts: Counter[str] = Counter()
    cursor = start
    for span in spans:
        parts.append(text[cursor : span.start])
        parts.append(span.entity.placeholder)
        counts[span.entity.name] += 1
        cursor = span.end
    parts.append(text[cursor:end])
    return "".join(parts), counts


class StreamRedactor:
    """Push text deltas, get back the redacted text that is safe to send; `flush` at the end."""

    def __init__(self, scanner: PIIScanner) -> None:
        self._scanner = scanner
        self._context = ""
        self._pending = ""
        self.counts: Counter[str] = Counter()

    def push(self, delta: str) -> str:
        self._pending += delta
        text = self._context + self._pending
        spans, hold = self._scanner.scan_stream(text, len(self._context))
        return self._release(text, spans, hold)

    def flush(self) -> str:
        text = self._context + self._pending
        return self._release(text, self._scanner.spans(text, len(self._context)), len(text))

    def _release(self, text: str, spans: list[Span], upto: int) -> str:
        offset = len(self._context)
        if upto <= offset:
            return ""
        released, counts = _apply(text, spans, offset, upto)
        self.counts.update(counts)
        self._context = text[:upto][-_CONTEXT_CHARS:]
        self._pending = text[upto:]
        return released


RedactionObserver = Callable[[Counter[str]], None]
"""Told the count of each entity redacted (feeds llm_pii_redactions_total)."""


class PIIGuard:
    """What the service applies: input redaction or blocking, output stream filters, log redaction."""

    def __init__(self, settings: PIISettings, on_redaction: RedactionObserver | None = None) -> None:
        self.settings = settings
        self._scanner = PIIScanner(entities_from_settings(settings))
        self._on_redaction = on_redaction

    @property
    def entity_names(self) -> list[str]:
        return [entity.name for entity in self._scanner.entities]

    def check_input(self, text: str, param: str) -> str:
        """The text the model may see: redacted, or refused in block mode (PIIBlocked)."""
        blocking = self.settings.mode == "block"
        if not (self.settings.enabled and (self.settings.redact_input or blocking)):
            return text
        redacted, counts = self._scanner.redact(text)
        if counts and blocking:
            found = ", ".join(sorted(counts))
            raise PIIBlocked(f"{param} contains personal data ({found}); remove it and retry", param=param)
        self._report(counts)
        return redacted

    def output_filter(self) -> StreamRedactor | None:
        if not (self.settings.enabled and self.settings.redact_output):
            return None
        return StreamRedactor(self._scanner)

    def report_output(self, redactor: StreamRedactor) -> None:
        self._report(redactor.counts)

    def for_log(self, text: str) -> str:
        """Logged prompts are always redacted, whatever redact_input says."""
        return self._scanner.redact(text)[0]

    def _report(self, counts: Counter[str]) -> None:
        if counts and self._on_redaction is not None:
            self._on_redaction(counts)
