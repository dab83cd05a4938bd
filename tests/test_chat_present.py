"""ChatPresenter: pieces in, chat deltas (content / reasoning / status) out."""

from __future__ import annotations

import pytest

from http_front.blocks import command_block, file_change_block, plan_block, tool_block
from http_front.chat.present import ChatDelta, ChatOptions, ChatPresenter, ReasoningFormat
from http_front.pieces import (
    CommandCard,
    FileChangeCard,
    Piece,
    PlanCard,
    Reasoning,
    Status,
    Text,
    ToolCard,
)


def present_all(presenter: ChatPresenter, *pieces: Piece) -> list[ChatDelta]:
    return [d for piece in pieces for d in presenter.present(piece)]


def content(deltas: list[ChatDelta]) -> str:
    return "".join(d.content for d in deltas)


def presenter(
    reasoning: ReasoningFormat = ReasoningFormat.FIELD, *, status_events: bool = False
) -> ChatPresenter:
    return ChatPresenter(ChatOptions(reasoning=reasoning, status_events=status_events))


LS = CommandCard("/bin/bash -lc 'ls'", "completed", 0, 12, "a.txt\n")


# -- text and paragraphs --------------------------------------------------------------------


def test_the_first_paragraph_has_no_separator_and_later_ones_a_blank_line() -> None:
    p = ChatPresenter()
    assert p.options == ChatOptions()
    assert p.present(Text("Hello", new_paragraph=True)) == [ChatDelta(content="Hello")]
    assert p.present(Text(" world")) == [ChatDelta(content=" world")]
    assert p.present(Text("Next", new_paragraph=True)) == [ChatDelta(content="\n\nNext")]


@pytest.mark.parametrize(
    ("before", "separator"),
    [("ends a line\n", "\n"), ("ends a paragraph\n\n", ""), ("no newline", "\n\n")],
)
def test_the_separator_completes_what_the_text_ends_with(before: str, separator: str) -> None:
    p = ChatPresenter()
    p.present(Text(before))
    assert p.present(Text("after", new_paragraph=True)) == [ChatDelta(content=separator + "after")]


def test_an_empty_text_piece_gives_nothing() -> None:
    p = ChatPresenter()
    assert p.present(Text("")) == []
    assert p.shown == 0


# -- reasoning ----------------------------------------------------------------------------


def test_reasoning_as_its_own_field() -> None:
    p = presenter(ReasoningFormat.FIELD)
    deltas = present_all(
        p, Reasoning("Think"), Reasoning("ing"), Reasoning("Part two", new_part=True)
    )
    assert deltas == [
        ChatDelta(reasoning="Think"),
        ChatDelta(reasoning="ing"),
        ChatDelta(reasoning="\n\nPart two"),
    ]
    assert p.present(Text("Answer", new_paragraph=True)) == [ChatDelta(content="Answer")]
    assert p.content() == "Answer"


def test_hidden_reasoning_gives_nothing_and_counts_nothing() -> None:
    p = presenter(ReasoningFormat.HIDDEN)
    assert present_all(p, Reasoning("secret"), Reasoning("more", new_part=True)) == []
    assert p.shown == 0
    assert p.present(Text("Answer", new_paragraph=True)) == [ChatDelta(content="Answer")]
    assert p.content() == "Answer"


def test_think_is_opened_once_and_closed_before_the_answer() -> None:
    p = presenter(ReasoningFormat.THINK)
    assert p.present(Reasoning("Think")) == [ChatDelta(content="<think>\nThink")]
    assert p.present(Reasoning("ing")) == [ChatDelta(content="ing")]
    assert p.present(Reasoning("Part two", new_part=True)) == [ChatDelta(content="\n\nPart two")]
    assert p.present(Text("Answer", new_paragraph=True)) == [
        ChatDelta(content="\n</think>\n\n"),
        ChatDelta(content="Answer"),
    ]
    assert p.present(Status("Done", done=True)) == []  # nothing left open
    assert p.content() == "<think>\nThinking\n\nPart two\n</think>\n\nAnswer"


def test_think_is_closed_before_a_card() -> None:
    p = presenter(ReasoningFormat.THINK)
    p.present(Reasoning("plan"))
    deltas = p.present(LS)
    assert deltas[0] == ChatDelta(content="\n</think>\n\n")
    assert deltas[1].content.startswith('<details type="tool_calls"')
    assert len(deltas) == 2


def test_think_is_closed_at_the_done_status_of_a_turn_without_an_answer() -> None:
    p = presenter(ReasoningFormat.THINK)
    p.present(Reasoning("only thoughts"))
    assert p.present(Status("Thinking…")) == []  # not the end: stays open
    assert p.present(Status("the turn failed", done=True)) == [ChatDelta(content="\n</think>\n\n")]
    assert p.content() == "<think>\nonly thoughts\n</think>\n\n"


def test_think_reopens_for_reasoning_after_an_answer() -> None:
    p = presenter(ReasoningFormat.THINK)
    deltas = present_all(
        p,
        Reasoning("first"),
        Text("Answer", new_paragraph=True),
        LS,
        Reasoning("second"),
        Text("More", new_paragraph=True),
    )
    text = content(deltas)
    assert text.count("<think>") == 2
    assert text.count("</think>") == 2
    assert text.endswith("<think>\nsecond\n</think>\n\nMore")


# -- statuses -----------------------------------------------------------------------------


def test_statuses_are_dropped_unless_enabled() -> None:
    p = presenter(status_events=False)
    assert p.present(Status("Running `ls`")) == []
    assert p.present(Status("Done", done=True)) == []
    assert p.shown == 0


def test_statuses_are_deltas_when_enabled() -> None:
    p = presenter(status_events=True)
    assert p.present(Status("Running `ls`")) == [ChatDelta(status=Status("Running `ls`"))]
    assert p.present(Status("Done", done=True)) == [ChatDelta(status=Status("Done", done=True))]
    assert p.shown == 2
    assert p.content() == ""


def test_the_done_status_follows_the_closing_of_think() -> None:
    p = presenter(ReasoningFormat.THINK, status_events=True)
    p.present(Reasoning("hm"))
    assert p.present(Status("Done", done=True)) == [
        ChatDelta(content="\n</think>\n\n"),
        ChatDelta(status=Status("Done", done=True)),
    ]


# -- cards --------------------------------------------------------------------------------


def test_a_command_card_is_its_block_set_apart_from_the_text() -> None:
    p = ChatPresenter()
    p.present(Text("Let me look.", new_paragraph=True))
    block = command_block(
        command=LS.command,
        status="completed",
        exit_code=0,
        duration_ms=12,
        output="a.txt\n",
        output_lines=20,
    )
    assert p.present(LS) == [ChatDelta(content="\n\n" + block)]
    assert "<summary>Ran `ls` (exit 0, 12 ms)</summary>" in block
    # The block ends its own paragraph: the next text needs no separator.
    assert p.present(Text("Found it.", new_paragraph=True)) == [ChatDelta(content="Found it.")]
    assert p.content() == "Let me look.\n\n" + block + "Found it."


def test_a_card_first_has_no_separator() -> None:
    p = ChatPresenter()
    (delta,) = p.present(LS)
    assert delta.content.startswith('<details type="tool_calls" done="true" name="shell"')


def test_command_output_is_trimmed_to_the_configured_lines() -> None:
    p = ChatPresenter(ChatOptions(command_output_lines=3))
    output = "".join(f"line {n}\n" for n in range(1, 11))
    (delta,) = p.present(CommandCard("seq 10", "completed", 0, None, output))
    assert "(7 earlier lines not shown)" in delta.content
    assert "line 10" in delta.content
    assert "line 7\n" not in delta.content


def test_a_declined_command_names_the_policy() -> None:
    card = CommandCard("rm -rf /", "declined", None, None, "", declined_by="decline")
    (delta,) = ChatPresenter().present(card)
    assert "<summary>Declined by the approval policy (decline): `rm -rf /`</summary>" in (
        delta.content
    )


def test_file_change_card() -> None:
    card = FileChangeCard((("a.py", "update", "@@ -1 +1 @@\n-x\n+y\n"),), "completed")
    (delta,) = ChatPresenter().present(card)
    assert delta == ChatDelta(content=file_change_block(card.changes, "completed"))
    assert "<summary>Changed 1 file: a.py</summary>" in delta.content
    declined = FileChangeCard(card.changes, "declined", "cancel")
    (delta,) = ChatPresenter().present(declined)
    assert "File changes declined by the approval policy (cancel): a.py" in delta.content


def test_tool_card_with_and_without_body() -> None:
    card = ToolCard("docs/search", {"q": "x"}, "found", "Called MCP tool docs/search", "found")
    (delta,) = ChatPresenter().present(card)
    assert delta.content == tool_block(
        name="docs/search",
        arguments={"q": "x"},
        result="found",
        summary="Called MCP tool docs/search",
        body="found",
    )
    assert "<summary>Called MCP tool docs/search</summary>\n\nfound\n</details>" in delta.content
    bare = ToolCard("view_image", {"path": "/a.png"}, "", "Viewed image /a.png")
    (delta,) = ChatPresenter().present(bare)
    assert "<summary>Viewed image /a.png</summary>\n</details>\n\n" in delta.content


def test_plan_card() -> None:
    card = PlanCard((("read", "completed"), ("write", "pending")), "two steps")
    (delta,) = ChatPresenter().present(card)
    assert delta.content == plan_block(card.steps, "two steps")
    assert "<summary>Plan: 1/2 done</summary>" in delta.content
    assert "- [x] read\n- [ ] write" in delta.content


def test_a_summary_is_escaped_in_the_markup() -> None:
    card = ToolCard("web_search", {"query": "<b>"}, "", "Searched the web: <b> & co")
    (delta,) = ChatPresenter().present(card)
    assert "<summary>Searched the web: &lt;b&gt; &amp; co</summary>" in delta.content


# -- shown and content --------------------------------------------------------------------


def test_shown_counts_every_delta_given_out_and_content_only_the_content() -> None:
    p = presenter(ReasoningFormat.FIELD, status_events=True)
    deltas = present_all(
        p,
        Status("Thinking…"),
        Reasoning("why"),
        Text("One", new_paragraph=True),
        LS,
        Text("Two", new_paragraph=True),
        Status("Done", done=True),
    )
    assert p.shown == len(deltas) == 6
    assert p.content() == content(deltas)
    assert p.content().startswith("One\n\n<details")
    assert p.content().endswith("</details>\n\nTwo")
    assert "why" not in p.content()
