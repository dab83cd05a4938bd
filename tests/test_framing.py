from __future__ import annotations

import pytest

from bridge.framing import LineFramer, OversizedLine


def test_partial_lines_are_joined_across_reads() -> None:
    framer = LineFramer()
    assert framer.feed(b'{"a":') == []
    assert framer.pending_bytes == 5
    assert framer.feed(b"1}") == []
    assert framer.feed(b"\n") == [b'{"a":1}']
    assert framer.pending_bytes == 0


def test_several_messages_in_one_read() -> None:
    framer = LineFramer()
    assert framer.feed(b"one\ntwo\nthree\nfour") == [b"one", b"two", b"three"]
    assert framer.feed(b"\n") == [b"four"]


def test_crlf_and_blank_lines() -> None:
    framer = LineFramer()
    assert framer.feed(b"a\r\n\n  \nb\n") == [b"a", b"b"]


def test_byte_at_a_time() -> None:
    framer = LineFramer()
    out: list[bytes | OversizedLine] = []
    for byte in b"hello\nworld\n":
        out += framer.feed(bytes([byte]))
    assert out == [b"hello", b"world"]


def test_oversized_line_is_dropped_and_reported_once() -> None:
    framer = LineFramer(max_line_bytes=8)
    assert framer.feed(b"ok\n0123456789") == [b"ok"]
    # the open line is already over the limit: memory is released at once
    assert framer.pending_bytes == 0
    assert framer.feed(b"more bytes of the same line") == []
    assert framer.feed(b"end\nnext\n") == [OversizedLine(10 + 27 + 3), b"next"]


def test_oversized_complete_line_in_one_read() -> None:
    framer = LineFramer(max_line_bytes=4)
    assert framer.feed(b"abcdefgh\nxy\n") == [OversizedLine(8), b"xy"]


def test_line_exactly_at_the_limit_is_kept() -> None:
    framer = LineFramer(max_line_bytes=4)
    assert framer.feed(b"abcd\n") == [b"abcd"]


def test_close_returns_an_unterminated_tail() -> None:
    framer = LineFramer()
    framer.feed(b"first\nlast")
    assert framer.close() == b"last"
    assert framer.close() is None


def test_close_while_discarding_reports_the_oversized_line() -> None:
    framer = LineFramer(max_line_bytes=2)
    framer.feed(b"abcdef")
    assert framer.close() == OversizedLine(6)


def test_non_json_lines_are_still_lines() -> None:
    # Framing does not judge content; classification does.
    assert LineFramer().feed(b"not json\n") == [b"not json"]


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LineFramer(0)
