"""Pieces → Ollama's objects (http_front/ollama/encode.py), fed typed values."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import orjson

from http_front.chat.present import ChatDelta, ChatOptions, ReasoningFormat
from http_front.ollama.encode import (
    OllamaEncoder,
    OllamaPresenter,
    Stats,
    WholeAnswer,
    error_object,
    line,
    stats_of,
)
from http_front.pieces import CommandCard, Piece, Reasoning, Status, Text, Usage
from supervisor import Turn

NOW = "2025-01-01T00:00:00.000000Z"
USAGE = Usage(prompt_tokens=100, completion_tokens=7, total_tokens=107, cached_tokens=0,
              reasoning_tokens=0)  # fmt: skip


def shown(presenter: OllamaPresenter, pieces: list[Piece]) -> tuple[str, str]:
    whole = WholeAnswer()
    for piece in pieces:
        for delta in presenter.present(piece):
            whole.add(delta)
    for delta in presenter.finish():
        whole.add(delta)
    return "".join(whole.content), "".join(whole.thinking)


def test_text_and_thinking() -> None:
    pieces: list[Piece] = [
        Reasoning("plan"),
        Reasoning("more", new_part=True),
        Text("Hello"),
        Text(" world"),
        Status("done", done=True),
    ]
    assert shown(OllamaPresenter(ChatOptions()), pieces) == ("Hello world", "plan\n\nmore")
    hidden = ChatOptions(reasoning=ReasoningFormat.HIDDEN)
    assert shown(OllamaPresenter(hidden), pieces) == ("Hello world", "")


def test_stop_sequence_cuts_the_answer_and_everything_after() -> None:
    presenter = OllamaPresenter(ChatOptions(), ["STOP"])
    pieces: list[Piece] = [Text("one ST"), Text("OP two"), Reasoning("late"), Text("three")]
    assert shown(presenter, pieces) == ("one ", "")
    assert presenter.stopped
    assert presenter.content() == "one "


def test_held_back_text_goes_out_before_a_card_and_at_the_end() -> None:
    presenter = OllamaPresenter(ChatOptions(), ["STOP"])
    card = CommandCard("ls", "completed", 0, 5, "a\n")
    assert presenter.present(Text("ends with ST")) == [ChatDelta(content="ends with ")]
    deltas = presenter.present(card)
    assert deltas[0] == ChatDelta(content="ST")
    assert "<details" in deltas[1].content
    assert presenter.present(Text("S")) == []
    assert presenter.finish() == [ChatDelta(content="S")]
    assert not presenter.stopped


def test_no_stops_pass_text_through() -> None:
    presenter = OllamaPresenter(ChatOptions())
    assert presenter.present(Text("STOP")) == [ChatDelta(content="STOP")]
    assert presenter.finish() == []


def test_chat_objects() -> None:
    encoder = OllamaEncoder("chat", "m:latest")
    assert encoder.chunk(ChatDelta(content="Hi"), NOW) == {
        "model": "m:latest",
        "created_at": NOW,
        "message": {"role": "assistant", "content": "Hi"},
        "done": False,
    }
    assert encoder.chunk(ChatDelta(reasoning="hm"), NOW)["message"] == {  # type: ignore[index]
        "role": "assistant",
        "content": "",
        "thinking": "hm",
    }
    assert encoder.chunk(ChatDelta(), NOW) is None
    stats = Stats(10, 1, 100, 2, 7, 3)
    final = encoder.final(NOW, "stop", stats, content="Hi", thinking="hm")
    assert final == {
        "model": "m:latest",
        "created_at": NOW,
        "message": {"role": "assistant", "content": "Hi", "thinking": "hm"},
        "done": True,
        "done_reason": "stop",
        "total_duration": 10,
        "load_duration": 1,
        "prompt_eval_count": 100,
        "prompt_eval_duration": 2,
        "eval_count": 7,
        "eval_duration": 3,
    }


def test_generate_objects_and_lines() -> None:
    encoder = OllamaEncoder("generate", "m")
    chunk = encoder.chunk(ChatDelta(content="a\nb"), NOW)
    assert chunk == {"model": "m", "created_at": NOW, "response": "a\nb", "done": False}
    assert encoder.empty(NOW)["response"] == ""
    final = encoder.final(NOW, "length", Stats())
    assert (final["response"], final["done"], final["done_reason"]) == ("", True, "length")
    assert "thinking" not in final
    # one object a line: newlines inside strings are escaped
    encoded = line(chunk)
    assert encoded.count(b"\n") == 1
    assert encoded.endswith(b"\n")
    assert orjson.loads(encoded) == chunk
    assert orjson.loads(line(error_object("boom"))) == {"error": "boom"}


def fake_turn(**timings: Any) -> Turn:
    values = {"queue_wait_s": 0.5, "setup_s": 0.25, "started_at": 10.0}
    values.update(timings)
    return cast("Turn", SimpleNamespace(**values))


def test_stats_from_the_turns_timings() -> None:
    turn = fake_turn(first_output_at=12.0, ended_at=15.0)
    stats = stats_of(began=9.0, now=16.0, turn=turn, ready_at=10.5, usage=USAGE)
    assert stats == Stats(
        total_duration=7_000_000_000,
        load_duration=750_000_000,
        prompt_eval_count=100,
        prompt_eval_duration=1_500_000_000,
        eval_count=7,
        eval_duration=3_000_000_000,
    )


def test_stats_of_a_turn_without_output_or_end() -> None:
    turn = fake_turn(first_output_at=None, ended_at=None)
    stats = stats_of(began=9.0, now=11.0, turn=turn, ready_at=None, usage=USAGE)
    assert stats.eval_duration == 0
    assert stats.prompt_eval_duration == 1_000_000_000  # from started_at to now
    assert stats_of(1.0, 2.0, None, None, USAGE) == Stats(total_duration=1_000_000_000)
