"""``POST /v1/chat/completions`` request validation and turn building.

The body is checked by hand rather than structured with cattrs because the
OpenAI API is lenient in ways a strict schema is not (``content`` as a string
or a list of parts, unknown sampling fields that must be accepted and
ignored), and every rejection must name the offending ``param`` the way
OpenAI does.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from supervisor import TurnRequest

from ..blocks import strip_bridge_markup
from ..errors import ApiError, bad_request
from ..turn_input import MAX_TURN_INPUT_CHARS, turn_input_too_long

REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Accepted for compatibility, and ignored: codex decides sampling itself.
_NUMBER_FIELDS = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "max_tokens",
    "max_completion_tokens",
    "seed",
)


@attrs.frozen
class ChatRequest:
    model: str | None
    stream: bool
    include_usage: bool
    turn: TurnRequest
    #: Every message as (role, text), system ones included, markup stripped:
    #: what a conversation's history signatures are made of.
    messages: tuple[tuple[str, str], ...] = ()


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    return data


def _too_long(param: str, length: int) -> ApiError:
    # OpenAI's answer to a string over a documented length.
    return bad_request(
        f"Invalid '{param}': string too long. Expected a string with maximum length "
        f"{MAX_TURN_INPUT_CHARS}, but got a string with length {length} instead "
        "(codex takes at most that many characters as a turn's input).",
        param=param,
        code="string_above_max_length",
    )


def _optional_string(data: dict[str, Any], field: str, param: str | None = None) -> str | None:
    value = data.get(field)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{param or field} must be a string", param=param or field)
    return value


def _text_of(content: Any, param: str) -> str:
    """The text of a message ``content``: a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{param} must be a string or an array of content parts", param=param)
    texts: list[str] = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if not isinstance(part, dict):
            raise bad_request(f"{where} must be an object", param=where)
        kind = part.get("type")
        if not isinstance(kind, str):
            raise bad_request(f"{where}.type must be a string", param=f"{where}.type")
        if kind in ("text", "input_text", "output_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"{where}.text must be a string", param=f"{where}.text")
            texts.append(text)
        elif kind == "refusal":
            continue
        else:
            raise bad_request(
                f"{where}: content parts of type {kind!r} are not supported; send text",
                param=f"{where}.type",
            )
    return "\n\n".join(texts)


def _history_item(role: str, text: str) -> dict[str, object]:
    """A model-visible Responses input item for one earlier message."""
    if role == "assistant":
        return {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text}],
        }
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _check_number_fields(data: dict[str, Any]) -> None:
    for field in _NUMBER_FIELDS:
        value = data.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise bad_request(f"{field} must be a number", param=field)
    n = data.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise bad_request("n must be a positive integer", param="n")
    if isinstance(n, int) and n > 1:
        raise bad_request("n > 1 is not supported: codex produces one answer per turn", param="n")


def _check_identity_fields(data: dict[str, Any]) -> None:
    """``user``, ``metadata`` and ``tools``: OpenAI types them, and
    conversation/identity.py reads them to classify the request."""
    _optional_string(data, "user")
    metadata = data.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise bad_request("metadata must be an object", param="metadata")
        _optional_string(metadata, "conversation_id", "metadata.conversation_id")
    tools = data.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("tools must be an array", param="tools")


def parse_chat_request(
    data: dict[str, Any], *, default_effort: str | None = None, summary: str | None = "auto"
) -> ChatRequest:
    """Validate a chat-completions body and build the codex turn for it.

    System and developer messages become the thread's developer instructions;
    the last message (which must come from the user) is the turn's input;
    everything between is replayed as history.
    """
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise bad_request("model must be a non-empty string", param="model")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", param="stream")
    include_usage = False
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad_request("stream_options must be an object", param="stream_options")
        flag = options.get("include_usage")
        if flag is None:
            flag = False
        if not isinstance(flag, bool):
            raise bad_request(
                "stream_options.include_usage must be a boolean",
                param="stream_options.include_usage",
            )
        include_usage = flag
    effort = data.get("reasoning_effort")
    if effort is not None and (not isinstance(effort, str) or effort not in REASONING_EFFORTS):
        raise bad_request(
            "reasoning_effort must be one of " + ", ".join(sorted(REASONING_EFFORTS)),
            param="reasoning_effort",
        )
    _check_number_fields(data)
    _check_identity_fields(data)

    messages = data.get("messages")
    if messages is None:
        raise bad_request("messages is required", param="messages")
    if not isinstance(messages, list):
        raise bad_request("messages must be an array", param="messages")
    if not messages:
        raise bad_request("messages must contain at least one message", param="messages")

    instructions: list[str] = []
    conversation: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object", param=where)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise bad_request(
                f"{where}.role must be one of " + ", ".join(sorted(_ROLES)), param=f"{where}.role"
            )
        text = _text_of(message.get("content"), f"{where}.content")
        name = _optional_string(message, "name", f"{where}.name")
        call = _optional_string(message, "tool_call_id", f"{where}.tool_call_id")
        if role in ("system", "developer"):
            if text:
                instructions.append(text)
        elif role in ("tool", "function"):
            conversation.append(("user", f"[result of {name or call or 'tool'}]\n{text}"))
        elif role == "assistant":
            # Our own tool cards and <think> sections come back verbatim
            # from chat frontends; the model must not read them as text.
            conversation.append((role, strip_bridge_markup(text)))
        else:
            conversation.append((role, text))

    if not conversation or conversation[-1][0] != "user":
        raise bad_request("the last non-system message must come from the user", param="messages")
    prompt = conversation[-1][1]
    if not prompt.strip():
        raise bad_request(
            f"messages[{len(messages) - 1}].content must not be empty",
            param=f"messages[{len(messages) - 1}].content",
        )
    if turn_input_too_long(prompt):
        raise _too_long(f"messages[{len(messages) - 1}].content", len(prompt))
    history = tuple(_history_item(role, text) for role, text in conversation[:-1] if text)
    everything = tuple(("system", text) for text in instructions) + tuple(conversation)
    return ChatRequest(
        model=model,
        stream=stream,
        include_usage=include_usage,
        messages=everything,
        turn=TurnRequest(
            text=prompt,
            model=model,
            developer_instructions="\n\n".join(instructions) or None,
            history=history,
            effort=effort or default_effort,
            summary=summary,
        ),
    )
