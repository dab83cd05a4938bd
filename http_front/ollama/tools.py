"""The client's functions on ``/api/chat``: Ollama's shapes of calls and results,
and how a request bringing results finds the codex turn that waits on them.

An answer that calls functions ends with ``message.tool_calls``: each call
with codex's call id (``id``), its position (``function.index``), its name and
its arguments as an object, the way newer Ollama servers give them. Ollama's
clients need not send those ids back: the official Python client drops them,
and its ``tool`` messages carry only ``content`` and ``tool_name``. So the
results are matched to the parked turn's calls in one of two ways:

* the client echoes ids (``tool_call_id`` on the ``tool`` messages, or ``id``
  on the assistant message's ``tool_calls``): they are codex's call ids;
* it does not: the calls were booked (:class:`CallBook`) under a digest of the
  request's conversation key, every message it sent, and the calls' names and
  arguments — exactly what the client sends back before its results. Only a
  request of the same API key (the tool park checks it), in the same
  conversation, with the same history and the same calls finds the turn: a
  different client cannot hit it by accident, and a second identical
  request's turn, had it one, would be interchangeable with it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import attrs
import orjson

from supervisor import Turn

from ..errors import ApiError, bad_request
from ..pieces import ClientCall
from ..tool_park import Held, ToolPark


@attrs.frozen
class Called:
    """A call of the assistant message the results follow, as the client sent it back."""

    name: str
    arguments: Any
    call_id: str | None = None


@attrs.frozen
class Returned:
    """A ``tool`` message: one call's result."""

    content: str
    name: str | None = None
    call_id: str | None = None


@attrs.frozen
class ToolReturn:
    """The results a chat request ends with, and the calls they answer."""

    #: Digest of the messages before the assistant message that called.
    history: str
    calls: tuple[Called, ...]
    results: tuple[Returned, ...]
    #: Where the results start in the request's messages (for errors).
    first: int = 0


def canonical(arguments: Any) -> str:
    """Arguments as compared: JSON with sorted keys (JSON text is parsed first)."""
    if isinstance(arguments, str | bytes):
        with contextlib.suppress(orjson.JSONDecodeError):
            arguments = orjson.loads(arguments)
    return orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode()


def arguments_object(call: ClientCall) -> Any:
    """A call's arguments as Ollama gives them: the JSON value, not its text."""
    try:
        return orjson.loads(call.arguments)
    except orjson.JSONDecodeError:
        return call.arguments


def tool_call(call: ClientCall, index: int) -> dict[str, Any]:
    """One entry of ``message.tool_calls``."""
    return {
        "id": call.call_id,
        "function": {"index": index, "name": call.name, "arguments": arguments_object(call)},
    }


def history_digest(messages: Sequence[dict[str, Any]]) -> str:
    """What a list of Ollama messages is recognized by: roles, contents,
    images, tool names and calls (not ``thinking``, which clients may drop)."""
    signed = [
        [
            message.get("role"),
            message.get("content") or "",
            list(message.get("images") or ()),
            message.get("tool_name") or "",
            [_call_sign(call) for call in message.get("tool_calls") or ()],
        ]
        for message in messages
    ]
    return hashlib.sha256(orjson.dumps(signed)).hexdigest()


def _call_sign(call: Any) -> list[str]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return []
    return [str(function.get("name")), canonical(function.get("arguments"))]


def calls_key(conversation: str | None, history: str, calls: Iterable[tuple[str, Any]]) -> str:
    """The book's key of calls made after ``history`` in ``conversation``."""
    signed = [conversation, history, [[name, canonical(args)] for name, args in calls]]
    return hashlib.sha256(orjson.dumps(signed)).hexdigest()


class CallBook:
    """Parked calls by :func:`calls_key`, for clients that send no call ids.

    Entries of turns that ended are dropped whenever the book is used; the
    live ones are bounded by the turns the park holds.
    """

    def __init__(self) -> None:
        self._entries: dict[str, list[tuple[tuple[str, ...], Turn]]] = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    def add(self, key: str, calls: Sequence[str], turn: Turn) -> None:
        self._prune()
        self._entries.setdefault(key, []).append((tuple(calls), turn))

    def find(self, key: str) -> list[tuple[str, ...]]:
        """The call ids booked under ``key``, oldest first."""
        self._prune()
        return [calls for calls, _ in self._entries.get(key, ())]

    def drop(self, key: str, calls: tuple[str, ...]) -> None:
        entries = [entry for entry in self._entries.get(key, ()) if entry[0] != calls]
        if entries:
            self._entries[key] = entries
        else:
            self._entries.pop(key, None)

    def _prune(self) -> None:
        for key, entries in list(self._entries.items()):
            live = [entry for entry in entries if entry[1].outcome is None]
            if live:
                self._entries[key] = live
            else:
                del self._entries[key]


def results_by_id(returned: ToolReturn, call_ids: Sequence[str]) -> dict[str, str]:
    """Each result under the id of the call it answers (``call_ids``: the
    booked calls, in the order of ``returned.calls``).

    A result names its call by ``tool_call_id``, else by ``tool_name`` (the
    k-th result of a name answers the k-th call of it), else by its place.
    """
    calls = returned.calls
    if len(call_ids) != len(calls):  # (a book entry has the calls' number)
        raise AssertionError("booked calls do not match")
    open_calls = list(range(len(calls)))
    results: dict[str, str] = {}
    for offset, result in enumerate(returned.results):
        where = f"messages[{returned.first + offset}]"
        index = _answered(result, calls, call_ids, open_calls)
        if index is None:
            raise bad_request(
                f"{where}: this tool message answers no call of the assistant message "
                "before it (name it by tool_name, or send one result per call in the "
                "calls' order)",
                param=where,
                code="unknown_tool_call",
            )
        open_calls.remove(index)
        results[call_ids[index]] = result.content
    return results


def _answered(
    result: Returned, calls: Sequence[Called], call_ids: Sequence[str], open_calls: list[int]
) -> int | None:
    if result.call_id is not None:
        return next((i for i in open_calls if call_ids[i] == result.call_id), None)
    if result.name is not None:
        return next((i for i in open_calls if calls[i].name == result.name), None)
    return open_calls[0] if open_calls else None


def echoed(returned: ToolReturn) -> dict[str, str] | None:
    """The results by the call ids the client sent back, if it sent them."""
    calls = returned.calls
    if calls and all(call.call_id for call in calls):
        return results_by_id(returned, [call.call_id or "" for call in calls])
    if returned.results and all(result.call_id for result in returned.results):
        return {result.call_id or "": result.content for result in returned.results}
    return None


@contextlib.asynccontextmanager
async def resume(
    park: ToolPark, book: CallBook, conversation: str | None, returned: ToolReturn
) -> AsyncIterator[Held]:
    """The parked turn these results answer, resumed with them (see
    :meth:`ToolPark.resume`)."""
    results = echoed(returned)
    if results is not None:
        async with park.resume(results) as held:
            yield held
        return
    key = calls_key(conversation, returned.history, ((c.name, c.arguments) for c in returned.calls))
    async with contextlib.AsyncExitStack() as stack:
        for call_ids in book.find(key):
            try:
                held = await stack.enter_async_context(
                    park.resume(results_by_id(returned, call_ids))
                )
            except ApiError as exc:
                if exc.code != "unknown_tool_call" or exc.param != "messages":
                    raise
                book.drop(key, call_ids)  # ended since: try the next one
                continue
            book.drop(key, call_ids)
            yield held
            return
    raise bad_request(
        "no function call waits for these results: the turn that called them ended (it "
        "finished, or waited too long for them), or the calls and the history before them "
        "are not the ones this server answered with",
        param="messages",
        code="unknown_tool_call",
    )
