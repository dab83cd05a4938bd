"""``POST /v1/chat/completions`` request validation and turn building.

The body is described once, as a JSON Schema (:data:`CHAT_BODY`): it is
checked with it first — every type, enum and range a client can get wrong is
refused naming its ``param`` the way OpenAI does — and ``/openapi.json``
publishes the same schema. What a schema cannot say is checked here by
hand: the last message must come from the user, images only in user
messages, fields whose *value* asks for something codex cannot do.

Every OpenAI request field is honoured, accepted and ignored (said so in its
schema ``description``), or refused with a 400 saying why; fields OpenAI
does not define are ignored (chat frontends add their own).
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from supervisor import TurnRequest

from .. import structured
from ..blocks import strip_bridge_markup
from ..errors import ApiError, bad_request
from ..images import Image, ImageLimits, check_count, from_url, input_image
from ..schema import BodySchema, JsonSchema
from ..turn_input import MAX_TURN_INPUT_CHARS, turn_input_too_long

REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
_ROLES = ("assistant", "developer", "function", "system", "tool", "user")
_TEXT_PARTS = ("text", "input_text", "output_text")
#: The most stop sequences a request may give (OpenAI's limit).
MAX_STOPS = 4
FUNCTION_CALLING = "client function calling is not supported yet"


def _ignored(schema: JsonSchema, why: str) -> JsonSchema:
    return {**schema, "description": f"Accepted and ignored: {why}."}


def _refused(schema: JsonSchema, why: str) -> JsonSchema:
    return {**schema, "description": f"Refused (400) when set: {why}."}


_SAMPLING = "codex and the model decide sampling themselves; turn/start takes no sampling options"
_NO_BOUND = "codex's turn/start has no bound on the output's length"
_NUMBER = {"type": ["number", "null"]}

_IMAGE_URL: JsonSchema = {
    "type": ["object", "string"],
    "description": "A data: URL (data:image/png;base64,…), or an http(s) URL where the "
    "operator allows them (image_urls); the object form or the URL itself.",
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "minLength": 1},
        "detail": _ignored(
            {"enum": ["auto", "low", "high"]}, "codex sends images at the model's own detail"
        ),
    },
}

_CONTENT_PART: JsonSchema = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": [*_TEXT_PARTS, "refusal", "image_url"]},
        "text": {"type": "string"},
        "image_url": _IMAGE_URL,
    },
    # One if/then/else (not two ifs): a failed "if" costs an exception in the
    # compiled validator, and text parts, the common ones, pass the first.
    "if": {"required": ["type"], "properties": {"type": {"enum": list(_TEXT_PARTS)}}},
    "then": {"required": ["text"]},
    "else": {
        "if": {"required": ["type"], "properties": {"type": {"const": "image_url"}}},
        "then": {"required": ["image_url"]},
    },
}

_MESSAGE: JsonSchema = {
    "title": "message",
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {
            "enum": list(_ROLES),
            "description": "system and developer messages become the thread's developer "
            "instructions; tool and function results are replayed as user messages.",
        },
        "content": {
            "type": ["string", "array", "null"],
            "description": "A string, or text parts (text, input_text, output_text; refusal "
            "parts are skipped) and, in user messages, image_url parts.",
            "items": _CONTENT_PART,
        },
        "name": {"type": ["string", "null"]},
        "tool_call_id": {"type": ["string", "null"]},
    },
}

_RESPONSE_FORMAT: JsonSchema = {
    "type": ["object", "null"],
    "description": "text: a plain answer; json_object: the turn asks for one JSON object; "
    "json_schema: the schema becomes codex's outputSchema, which codex always sends to "
    "the model as strict. The answer comes back as the model gave it.",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["text", "json_object", "json_schema"]},
        "json_schema": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": "^[A-Za-z0-9_-]{1,64}$",
                    "description": "Checked; codex names every schema codex_output_schema.",
                },
                "description": {"type": ["string", "null"]},
                "schema": {"type": "object"},
                "strict": {"type": ["boolean", "null"]},
            },
        },
    },
    "allOf": [
        {
            "if": {"required": ["type"], "properties": {"type": {"const": "json_schema"}}},
            "then": {"required": ["json_schema"]},
        }
    ],
}

#: A client function: codex offers it to the model as a dynamic tool
#: (:func:`dynamic_tools`, which the Ollama door uses too).
FUNCTION_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "description": {"type": ["string", "null"]},
        "parameters": {"type": ["object", "null"]},
    },
}
#: An entry of ``tools`` (chat completions' and Ollama's shape alike).
TOOL_SCHEMA = {
    "type": "object",
    "properties": {"type": {"type": "string"}, "function": FUNCTION_SCHEMA},
}


#: The chat-completions request body.
CHAT_BODY = BodySchema(
    "ChatCompletionRequest",
    {
        "type": "object",
        "description": "An OpenAI chat-completions request. Fields not listed here are ignored.",
        "required": ["messages"],
        "properties": {
            "model": {
                "title": "a non-empty string",
                "anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}],
                "description": "A codex model or an operator's alias (default: codex's).",
            },
            "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
            "stream": {"type": ["boolean", "null"]},
            "stream_options": {
                "type": ["object", "null"],
                "properties": {"include_usage": {"type": ["boolean", "null"]}},
            },
            "reasoning_effort": {"enum": [*sorted(REASONING_EFFORTS), None]},
            "response_format": _RESPONSE_FORMAT,
            "stop": {
                "type": ["string", "array", "null"],
                "items": {"type": "string"},
                "maxItems": MAX_STOPS,
                "description": "Honoured by the bridge: the answer text ends before the first "
                "stop sequence, the turn is then interrupted, finish_reason is stop.",
            },
            "n": {
                "type": ["integer", "null"],
                "minimum": 1,
                "description": "Only 1: codex produces one answer per turn.",
            },
            "temperature": _ignored(_NUMBER, _SAMPLING),
            "top_p": _ignored(_NUMBER, _SAMPLING),
            "presence_penalty": _ignored(_NUMBER, _SAMPLING),
            "frequency_penalty": _ignored(_NUMBER, _SAMPLING),
            "seed": _ignored(_NUMBER, _SAMPLING),
            "logit_bias": _ignored({"type": ["object", "null"]}, _SAMPLING),
            "max_tokens": _ignored(_NUMBER, _NO_BOUND),
            "max_completion_tokens": _ignored(_NUMBER, _NO_BOUND),
            "user": {
                "type": ["string", "null"],
                "description": "Part of the conversation key when no conversation header is sent.",
            },
            "metadata": {
                "type": ["object", "null"],
                "description": "metadata.conversation_id names the conversation; the rest is "
                "ignored.",
                "properties": {"conversation_id": {"type": ["string", "null"]}},
            },
            "tools": {
                "type": ["array", "null"],
                "items": TOOL_SCHEMA,
                "description": "Accepted and ignored while tool_choice leaves the choice to the "
                "model (absent, auto, none): codex answers without calling client functions. "
                "Refused (400) with tool_choice required or a named function: "
                + FUNCTION_CALLING
                + ".",
            },
            "tool_choice": {
                "anyOf": [
                    {"enum": ["none", "auto", "required"]},
                    {"type": "object"},
                    {"type": "null"},
                ],
                "description": "none and auto are accepted; required or a named function are "
                "refused (400): " + FUNCTION_CALLING + ".",
            },
            "functions": {
                "type": ["array", "null"],
                "items": FUNCTION_SCHEMA,
                "description": "Deprecated form of tools; treated the same way.",
            },
            "function_call": {
                "anyOf": [{"enum": ["none", "auto"]}, {"type": "object"}, {"type": "null"}],
                "description": "Deprecated form of tool_choice; a named function is refused.",
            },
            "parallel_tool_calls": _ignored(
                {"type": ["boolean", "null"]}, "no client functions are called"
            ),
            "logprobs": _refused(
                {"type": ["boolean", "null"]}, "true: codex gives no log probabilities"
            ),
            "top_logprobs": _refused(
                {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
                "above 0: codex gives no log probabilities",
            ),
            "modalities": _refused(
                {"type": ["array", "null"], "items": {"enum": ["text", "audio"]}},
                "with audio: codex answers in text only",
            ),
            "audio": _refused({"type": ["object", "null"]}, "codex answers in text only"),
            "web_search_options": _refused(
                {"type": ["object", "null"]},
                "codex's web search is set in its own configuration, not per request",
            ),
            "prediction": _ignored(
                {"type": ["object", "null"]},
                "a latency hint; codex has no predicted outputs, the answer is the same",
            ),
            "store": _ignored(
                {"type": ["boolean", "null"]},
                "codex keeps its own threads; there are no stored completions to list",
            ),
            "service_tier": _ignored(
                {"type": ["string", "null"]},
                "not passed on: codex's turn/start names its own tiers (serviceTier)",
            ),
            "verbosity": _ignored(
                {"enum": ["low", "medium", "high", None]}, "codex sets the model's verbosity"
            ),
            "prompt_cache_key": _ignored(
                {"type": ["string", "null"]}, "codex keys the prompt cache by its thread"
            ),
            "safety_identifier": _ignored({"type": ["string", "null"]}, "not passed to codex"),
        },
    },
)


@attrs.frozen
class ChatRequest:
    model: str | None
    stream: bool
    include_usage: bool
    turn: TurnRequest
    #: Every message as (role, text), system ones included, markup stripped:
    #: what a conversation's history signatures are made of (with the images).
    messages: tuple[tuple[str, str], ...] = ()
    #: Each message's images, in the order of ``messages``.
    message_images: tuple[tuple[Image, ...], ...] = ()
    #: Stop sequences, honoured by the bridge.
    stop: tuple[str, ...] = ()
    #: The answer must be one JSON object (``response_format: json_object``).
    json_mode: bool = False
    #: The client's results of the model's function calls (call id → text):
    #: the messages end with them, and they resume the turn that waits.
    tool_results: dict[str, str] = attrs.field(factory=dict)

    @property
    def images(self) -> tuple[Image, ...]:
        """The last message's images: the turn's own."""
        return self.message_images[-1] if self.message_images else ()


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


@attrs.define
class _Message:
    role: str
    text: str
    images: list[Image] = attrs.Factory(list)


def _content(content: Any, where: str, role: str, limits: ImageLimits) -> _Message:
    """A message's text and images (its content, already schema-checked)."""
    if content is None or isinstance(content, str):
        return _Message(role, content or "")
    texts: list[str] = []
    images: list[Image] = []
    for index, part in enumerate(content):
        kind = part["type"]
        if kind in _TEXT_PARTS:
            texts.append(part["text"])
        elif kind == "image_url":
            param = f"{where}[{index}].image_url"
            if role != "user":
                raise bad_request(
                    f"{param}: images are taken in user messages only", param=f"{where}[{index}]"
                )
            url = part["image_url"]
            if isinstance(url, dict):
                url, param = url["url"], f"{param}.url"
            images.append(from_url(url, param, limits))
    return _Message(role, "\n\n".join(texts), images)


def _history_item(message: _Message) -> dict[str, object]:
    """A model-visible Responses input item for one earlier message."""
    if message.role == "assistant":
        return {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": message.text}],
        }
    parts: list[dict[str, object]] = []
    if message.text:
        parts.append({"type": "input_text", "text": message.text})
    parts += [input_image(image) for image in message.images]
    return {"type": "message", "role": "user", "content": parts}


def dynamic_tools(data: dict[str, Any]) -> tuple[dict[str, object], ...]:
    """The client's functions as codex dynamic tools (none with tool_choice "none")."""
    if data.get("tool_choice") == "none" or data.get("function_call") == "none":
        return ()
    specs: list[dict[str, object]] = []
    for tool in data.get("tools") or ():
        function = tool.get("function") if tool.get("type", "function") == "function" else None
        if isinstance(function, dict):
            specs.append(_dynamic_tool(function))
    for function in data.get("functions") or ():
        specs.append(_dynamic_tool(function))
    return tuple(specs)


def _dynamic_tool(function: dict[str, Any]) -> dict[str, object]:
    parameters = function.get("parameters")
    return {
        "type": "function",
        "name": function["name"],
        "description": function.get("description") or "",
        "inputSchema": parameters
        if isinstance(parameters, dict)
        else {"type": "object", "properties": {}},
    }


def tools_signature(tools: tuple[dict[str, object], ...]) -> str:
    """What identifies a tool set: a thread keeps the tools it started with."""
    return orjson.dumps(tools, option=orjson.OPT_SORT_KEYS).decode()


def _calls_text(calls: Any) -> str:
    """An assistant message's function calls, as the model's history shows them."""
    if not isinstance(calls, list):
        return ""
    parts = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(f"\n[called {function.get('name')} {function.get('arguments') or ''}]")
    return "".join(parts)


def _tool_results(messages: list[dict[str, Any]]) -> dict[str, str]:
    """The results the messages end with (``tool`` messages after the
    assistant message that called them), by call id."""
    results: dict[str, str] = {}
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") != "tool":
            break
        call = message.get("tool_call_id")
        if not isinstance(call, str) or not call:
            raise bad_request(
                f"messages[{index}].tool_call_id is required on a tool message",
                param=f"messages[{index}].tool_call_id",
            )
        content = message.get("content")
        results[call] = content if isinstance(content, str) else _parts_text(content)
    return results


def _parts_text(content: Any) -> str:
    if not isinstance(content, list):
        return ""
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def _check_refused(data: dict[str, Any]) -> None:
    """Fields whose value asks for what codex cannot do (the schema has the types)."""
    n = data.get("n")
    if n is not None and n > 1:
        raise bad_request("n > 1 is not supported: codex produces one answer per turn", param="n")
    tool_choice = data.get("tool_choice")
    if tool_choice == "required" or isinstance(tool_choice, dict):
        raise bad_request(
            f"tool_choice {orjson.dumps(tool_choice).decode()}: {FUNCTION_CALLING} (codex "
            "answers without calling client functions; leave tool_choice unset, auto or none)",
            param="tool_choice",
            code="unsupported_parameter",
        )
    if isinstance(data.get("function_call"), dict):
        raise bad_request(
            f"function_call naming a function: {FUNCTION_CALLING} (codex answers without "
            "calling client functions; leave function_call unset, auto or none)",
            param="function_call",
            code="unsupported_parameter",
        )
    if data.get("logprobs"):
        raise bad_request(
            "logprobs is not supported: codex gives no log probabilities",
            param="logprobs",
            code="unsupported_parameter",
        )
    if data.get("top_logprobs"):
        raise bad_request(
            "top_logprobs is not supported: codex gives no log probabilities",
            param="top_logprobs",
            code="unsupported_parameter",
        )
    if "audio" in (data.get("modalities") or ()) or data.get("audio") is not None:
        param = "audio" if data.get("audio") is not None else "modalities"
        raise bad_request(
            "audio output is not supported: codex answers in text only",
            param=param,
            code="unsupported_parameter",
        )
    if data.get("web_search_options") is not None:
        raise bad_request(
            "web_search_options is not supported: codex's web search is set in its own "
            "configuration, not per request",
            param="web_search_options",
            code="unsupported_parameter",
        )


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return tuple(s for s in ([stop] if isinstance(stop, str) else stop) if s)


def _with_format(
    turn: TurnRequest, response_format: dict[str, Any] | None
) -> tuple[TurnRequest, bool]:
    """The turn with the answer's format asked for; and whether JSON mode is on."""
    kind = (response_format or {}).get("type", "text")
    if kind == "json_schema":
        schema = response_format["json_schema"].get("schema") if response_format else None
        if schema is not None:
            return structured.with_schema(turn, schema), False
        kind = "json_object"  # a schema-less json_schema asks for JSON, no more
    # JSON mode's note goes on whichever turn runs (http_front/turns.py).
    return turn, kind == "json_object"


def parse_chat_request(
    data: dict[str, Any],
    *,
    default_effort: str | None = None,
    summary: str | None = "auto",
    images: ImageLimits | None = None,
    client_tools: bool = False,
) -> ChatRequest:
    """Validate a chat-completions body and build the codex turn for it.

    System and developer messages become the thread's developer instructions;
    the last message (which must come from the user) is the turn's input,
    its images the turn's images; everything between is replayed as history.
    """
    CHAT_BODY.check(data)
    limits = images or ImageLimits()
    model = data.get("model")
    if model is not None and not model.strip():
        raise bad_request("model must be a non-empty string", param="model")
    _check_refused(data)

    messages = data["messages"]
    instructions: list[str] = []
    conversation: list[_Message] = []
    every_image: list[Image] = []
    for index, raw in enumerate(messages):
        where = f"messages[{index}]"
        message = _content(raw.get("content"), f"{where}.content", raw["role"], limits)
        every_image += message.images
        check_count(every_image, limits, f"{where}.content")
        role = message.role
        if role in ("system", "developer"):
            if message.text:
                instructions.append(message.text)
        elif role in ("tool", "function"):
            name = raw.get("name") or raw.get("tool_call_id") or "tool"
            conversation.append(_Message("user", f"[result of {name}]\n{message.text}"))
        elif role == "assistant":
            # Our own tool cards and <think> sections come back verbatim
            # from chat frontends; the model must not read them as text.
            text = strip_bridge_markup(message.text) + _calls_text(raw.get("tool_calls"))
            conversation.append(_Message(role, text.strip()))
        else:
            conversation.append(message)

    if not conversation or conversation[-1].role != "user":
        raise bad_request("the last non-system message must come from the user", param="messages")
    last = conversation[-1]
    where = f"messages[{len(messages) - 1}].content"
    if not last.text.strip() and not last.images:
        raise bad_request(f"{where} must not be empty", param=where)
    if turn_input_too_long(last.text):
        raise _too_long(where, len(last.text))
    history = tuple(_history_item(m) for m in conversation[:-1] if m.text or m.images)
    turn = TurnRequest(
        text=last.text,
        model=model,
        developer_instructions="\n\n".join(instructions) or None,
        history=history,
        effort=data.get("reasoning_effort") or default_effort,
        summary=summary,
    )
    turn, json_mode = _with_format(turn, data.get("response_format"))
    tools = dynamic_tools(data) if client_tools else ()
    results = _tool_results(messages) if client_tools else {}
    signed_tools = (("tools", tools_signature(tools)),) if tools else ()
    stream = bool(data.get("stream"))
    return ChatRequest(
        model=model,
        stream=stream,
        include_usage=bool((data.get("stream_options") or {}).get("include_usage")),
        messages=(
            *signed_tools,
            *(("system", text) for text in instructions),
            *((m.role, m.text) for m in conversation),
        ),
        message_images=(
            *(() for _ in signed_tools),
            *(() for _ in instructions),
            *(tuple(m.images) for m in conversation),
        ),
        tool_results=results,
        stop=_stops(data.get("stop")),
        json_mode=json_mode,
        turn=attrs.evolve(turn, tools=tools),
    )
