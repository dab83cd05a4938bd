"""Newline framing for the codex app-server stdio protocol (sans-IO).

The child writes one JSON object per line. :class:`LineFramer` is fed raw
bytes as they arrive and hands back complete lines; it never imports an IO
library, so it is tested with plain byte strings.
"""

from __future__ import annotations

import attrs

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024


@attrs.frozen
class OversizedLine:
    """A line longer than the framer's limit was dropped.

    ``size`` counts the bytes discarded (the whole line, once its end is seen;
    while the line is still open it is the size so far).
    """

    size: int


class LineFramer:
    """Split a byte stream into lines of at most ``max_line_bytes``.

    ``feed`` returns the complete lines found so far, without their ``\\n``
    (a trailing ``\\r`` is stripped too). Empty lines are skipped. A line that
    grows beyond the limit is discarded up to its newline and reported once as
    :class:`OversizedLine` in the returned list, so memory stays bounded
    whatever the child writes.
    """

    __slots__ = ("_buffer", "_discarded", "_discarding", "_scan_from", "max_line_bytes")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes <= 0:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._scan_from = 0
        self._discarding = False
        self._discarded = 0

    def feed(self, data: bytes | bytearray) -> list[bytes | OversizedLine]:
        out: list[bytes | OversizedLine] = []
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                self._discarded += len(data)
                return out
            out.append(OversizedLine(self._discarded + newline))
            self._discarding = False
            self._discarded = 0
            data = data[newline + 1 :]
        buffer = self._buffer
        buffer += data
        start = 0
        find = buffer.find
        while True:
            newline = find(b"\n", max(start, self._scan_from))
            if newline < 0:
                break
            self._scan_from = 0
            if newline - start > self.max_line_bytes:
                out.append(OversizedLine(newline - start))
            else:
                line = bytes(buffer[start:newline]).rstrip(b"\r")
                if line.strip():
                    out.append(line)
            start = newline + 1
        if start:
            del buffer[:start]
        if len(buffer) > self.max_line_bytes:
            self._discarding = True
            self._discarded = len(buffer)
            buffer.clear()
            self._scan_from = 0
        else:
            # Don't rescan bytes already known to hold no newline.
            self._scan_from = len(buffer)
        return out

    @property
    def pending_bytes(self) -> int:
        """Bytes held for a line whose end has not arrived yet."""
        return len(self._buffer)

    def close(self) -> bytes | OversizedLine | None:
        """End of stream: return a final unterminated line, if any."""
        if self._discarding:
            self._discarding = False
            size, self._discarded = self._discarded, 0
            return OversizedLine(size)
        rest = bytes(self._buffer).strip()
        self._buffer.clear()
        self._scan_from = 0
        return rest or None
