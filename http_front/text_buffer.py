"""Text that arrives in many small pieces, kept compactly.

An answer streams in as deltas of a few characters each, and a turn keeps
its text (for the conversation's memory, a retry's comparison, the whole
answer). A list of the deltas costs a string object each: some 50 bytes on
top of its characters, and a pointer. :class:`TextBuffer` joins every
:data:`RUN` pieces into one string, so a long answer takes little more than
its characters.
"""

from __future__ import annotations

#: Pieces joined into one string at a time.
RUN = 64


class TextBuffer:
    __slots__ = ("_joined", "_recent")

    def __init__(self) -> None:
        self._joined: list[str] = []
        self._recent: list[str] = []

    def append(self, text: str) -> None:
        recent = self._recent
        recent.append(text)
        if len(recent) >= RUN:
            self._joined.append("".join(recent))
            recent.clear()

    def text(self) -> str:
        """All the text so far."""
        if self._recent:
            self._joined.append("".join(self._recent))
            self._recent.clear()
        if len(self._joined) > 1:
            self._joined[:] = ["".join(self._joined)]
        return self._joined[0] if self._joined else ""

    def clear(self) -> None:
        self._joined.clear()
        self._recent.clear()

    def __bool__(self) -> bool:
        return bool(self._recent) or any(self._joined)
