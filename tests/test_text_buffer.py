"""TextBuffer keeps streamed text compactly and gives it back unchanged."""

from __future__ import annotations

import sys

from hypothesis import given
from hypothesis import strategies as st

from http_front.text_buffer import RUN, TextBuffer


@given(st.lists(st.text(max_size=20), max_size=3 * RUN + 5), st.integers(0, 3 * RUN + 5))
def test_the_text_is_every_piece_in_order(pieces: list[str], read_at: int) -> None:
    buffer = TextBuffer()
    for index, piece in enumerate(pieces):
        if index == read_at:  # reading midway changes nothing
            assert buffer.text() == "".join(pieces[:index])
        buffer.append(piece)
    assert buffer.text() == "".join(pieces)
    assert buffer.text() == "".join(pieces)
    assert bool(buffer) == bool("".join(pieces))
    buffer.clear()
    assert buffer.text() == ""
    assert not buffer


def test_a_long_answer_takes_little_more_than_its_characters() -> None:
    buffer = TextBuffer()
    pieces = [f"{i:06d} tok " for i in range(10_000)]  # fresh objects, as deltas are
    for piece in pieces:
        buffer.append(piece)
    characters = sum(len(piece) for piece in pieces)
    del pieces  # what the buffer alone keeps alive
    kept = sys.getsizeof(buffer._joined) + sum(sys.getsizeof(s) for s in buffer._joined)
    kept += sys.getsizeof(buffer._recent) + sum(sys.getsizeof(s) for s in buffer._recent)
    assert kept < characters * 1.2
