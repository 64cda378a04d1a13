"""API keys: who is calling. Keys are kept only as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import SecretStr

from app.core.config import NamedKey, Settings, key_name
from app.core.usage import ANONYMOUS

MAX_KEY_CHARS = 512


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. Only the name ever reaches logs, metrics and session owners."""

    name: str


def key_names(settings: Settings) -> list[str]:
    """Every name usage may be counted under: the configured keys' and `anonymous` (a bounded set)."""
    return [*settings.security.key_names(), ANONYMOUS]


class ApiKeys:
    def __init__(self, configured: Sequence[SecretStr | NamedKey]) -> None:
        self._entries: list[tuple[str, bytes]] = []
        for index, entry in enumerate(configured, start=1):
            if isinstance(entry, NamedKey):
                digest = (
                    bytes.fromhex(entry.key_sha256)
                    if entry.key_sha256 is not None
                    else _digest(entry.key.get_secret_value() if entry.key else "")
                )
            else:
                digest = _digest(entry.get_secret_value())
            self._entries.append((key_name(index, entry), digest))

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal whose key this is, or None. Every entry is compared, match or not."""
        if not presented or len(presented) > MAX_KEY_CHARS:
            return None
        digest = _digest(presented)
        found: str | None = None
        for name, expected in self._entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        return Principal(found) if found is not None else None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
