"""Stop sequences over streamed text: emit what cannot start a stop, hold back what still might."""

from __future__ import annotations


class StopSequenceFilter:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Take new text; return the part safe to emit. Sets `stopped` when a stop appears."""
        if not self._stops:
            return text
        pending = self._held + text
        first = min((i for i in (pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if first >= 0:
            self._held = ""
            self.stopped = True
            return pending[:first]
        keep = self._longest_stop_prefix_suffix(pending)
        self._held = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if stop.startswith(text[-size:]):
                    best = size
                    break
        return best
