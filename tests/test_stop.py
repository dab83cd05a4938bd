"""Stop sequences over streamed text (StopScanner) and over a turn's pieces
(StopFilter)."""

from __future__ import annotations

import pytest

from http_front.pieces import CommandCard, Piece, Reasoning, Status, Text
from http_front.stop import StopFilter, StopScanner


def scan(stops: list[str], deltas: list[str]) -> tuple[str, bool]:
    scanner = StopScanner(stops)
    out = "".join(scanner.feed(d) for d in deltas)
    return out + scanner.flush(), scanner.stopped


@pytest.mark.parametrize(
    ("stops", "deltas", "shown", "stopped"),
    [
        (["END"], ["abc", "dEN", "Dxyz"], "abcd", True),
        (["END"], ["abcEND"], "abc", True),
        (["END"], ["E", "N", "O"], "ENO", False),  # a false start is shown after all
        (["END"], ["abc", "EN"], "abcEN", False),  # held back, then flushed at the end
        (["\n\n", "###"], ["one\n", "\ntwo"], "one", True),
        (["xx", "b"], ["axxb"], "a", True),  # the first stop sequence in the text wins
        ([], ["a", "b"], "ab", False),
        ([""], ["a"], "a", False),
    ],
)
def test_scanner(stops: list[str], deltas: list[str], shown: str, stopped: bool) -> None:
    assert scan(stops, deltas) == (shown, stopped)


def test_scanner_holds_back_only_a_possible_beginning() -> None:
    scanner = StopScanner(["<stop>"])
    assert scanner.feed("hello <st") == "hello "
    assert scanner.feed("art") == "<start"
    assert not scanner.stopped


def test_nothing_after_the_stop() -> None:
    scanner = StopScanner(["."])
    assert scanner.feed("one. two") == "one"
    assert scanner.feed("three") == ""
    assert scanner.flush() == ""


def run(stops: list[str], pieces: list[Piece]) -> tuple[list[Piece], bool]:
    stop = StopFilter(stops)
    out = [p for piece in pieces for p in stop.feed(piece)]
    return out + stop.end(), stop.stopped


CARD = CommandCard("ls", "completed", 0, 5, "a\n")


def test_only_the_answer_text_is_cut() -> None:
    out, stopped = run(
        ["STOP"],
        [Reasoning("think STOP now"), Status("Running"), Text("ok ST"), Text("OP more")],
    )
    assert stopped
    assert out == [Reasoning("think STOP now"), Status("Running"), Text("ok ")]


def test_held_back_text_goes_before_a_card() -> None:
    out, stopped = run(["STOP"], [Text("a ST"), CARD, Text("OP b")])
    assert not stopped
    assert out == [Text("a "), Text("ST"), CARD, Text("OP b")]


def test_a_new_part_of_the_answer() -> None:
    out, _ = run(["END"], [Text("one E"), Text("two", new_paragraph=True), Text(" END x")])
    assert out == [Text("one "), Text("E"), Text("two", new_paragraph=True), Text(" ")]


def test_after_the_stop_nothing_passes() -> None:
    out, stopped = run(["!"], [Text("hi! there"), CARD, Reasoning("r"), Text("more")])
    assert stopped
    assert out == [Text("hi")]
