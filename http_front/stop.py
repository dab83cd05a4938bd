"""Stop sequences, honoured by the bridge.

codex has no stop sequences, so the bridge watches the answer text as it
streams: :class:`StopScanner` passes text on, holding back only what could
be the beginning of a stop sequence, and reports the moment one appears —
the text before it is the last the client gets; the door then ends the turn
(leaving it interrupts codex) and finishes with ``finish_reason: "stop"``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .pieces import Piece, Reasoning, Status, Text


class StopScanner:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""
        #: A stop sequence was seen: nothing more is to be shown.
        self.stopped = False

    def __bool__(self) -> bool:
        return bool(self.stops)

    def feed(self, text: str) -> str:
        """The part of ``text`` (after what was held back) safe to show now."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        pending = self._pending + text
        cut = min((i for i in (pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return pending[:cut]
        keep = self._tail(pending)
        self._pending = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep]

    def _tail(self, text: str) -> int:
        """How many trailing characters could begin a stop sequence."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def flush(self) -> str:
        """What was held back, at the end of the answer."""
        pending, self._pending = self._pending, ""
        return "" if self.stopped else pending


class StopFilter:
    """Stop sequences over a turn's pieces: they apply to the answer text
    only (not to reasoning, cards or status lines).

    Text held back at the end of one piece goes out before the next card,
    so the answer keeps its order; a stop sequence does not run across a
    card or into the answer's next part.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.scanner = StopScanner(stops)

    @property
    def stopped(self) -> bool:
        return self.scanner.stopped

    def feed(self, piece: Piece) -> list[Piece]:
        """What of ``piece`` (and of what was held back) to present now."""
        scanner = self.scanner
        if scanner.stopped:
            return []
        if type(piece) is not Text:
            if isinstance(piece, Reasoning | Status):
                return [piece]  # not part of the answer's text
            return [*self.end(), piece]
        out: list[Piece] = []
        if piece.new_paragraph:
            # A stop sequence does not run across the answer's parts.
            out += self.end()
        text = scanner.feed(piece.text)
        if text or piece.new_paragraph:
            out.append(Text(text, piece.new_paragraph))
        return out

    def end(self) -> list[Piece]:
        """What was held back, at the end of the answer (or before a card)."""
        text = self.scanner.flush()
        return [Text(text)] if text else []
