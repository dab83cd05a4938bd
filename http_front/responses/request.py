"""``POST /v1/responses`` request validation and turn building.

The body is checked against :data:`BODY` first (types, enums, ranges), then
by hand for what a schema cannot say: where each input message goes, which
fields are refused and why. The request's trailing user messages are the
turn's input; system and developer messages become developer instructions;
earlier user and assistant messages are replayed as history.

Function tools are the client's functions: codex offers them to the model
(dynamic tools). A request whose input ends with ``function_call_output``
items brings the results of the model's calls: it resumes the codex turn
waiting on them (:mod:`http_front.tool_park`), the call ids the key. Calls
and results earlier in the input are replayed as text, as chat does.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from supervisor import TurnRequest

from ..chat.request import REASONING_EFFORTS
from ..errors import ApiError, bad_request
from ..images import Image, ImageLimits, check_count, from_url, input_image
from ..schema import BodySchema, JsonSchema
from ..structured import with_json_mode, with_schema
from ..turn_input import MAX_TURN_INPUT_CHARS, turn_input_too_long

SUMMARIES = ("auto", "concise", "detailed")

#: Output item types this door produces: a client sending a response's
#: output back as input (managing the context itself) may include them.
#: They are accepted and not replayed (codex's own activity is not input).
OWN_OUTPUT_TYPES = frozenset(
    {
        "reasoning",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_call",
        "web_search_call",
    }
)

#: Accepted, and ignored: why, for each (the schema's description says the same).
IGNORED = {
    "temperature": "codex decides sampling itself",
    "top_p": "codex decides sampling itself",
    "top_logprobs": "codex reports no log probabilities",
    "max_output_tokens": "codex's turn/start has no output bound",
    "max_tool_calls": "codex does not bound the model's calls",
    "parallel_tool_calls": "the model decides whether it calls several functions at once",
    "truncation": "codex compacts a long thread itself",
    "user": "an end-user id, kept nowhere",
    "safety_identifier": "an end-user id, kept nowhere",
    "prompt_cache_key": "codex keys the model's prompt cache itself",
    "prompt_cache_retention": "codex keys the model's prompt cache itself",
    "service_tier": "codex picks the model provider's tier",
    "include": "nothing extra to include (no encrypted reasoning, no logprobs)",
    "stream_options": "no obfuscation padding is sent",
}

_NULLABLE_NUMBER: JsonSchema = {"type": ["number", "null"]}
_NULLABLE_STRING: JsonSchema = {"type": ["string", "null"]}

_PART: JsonSchema = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {
            "title": "one of input_text, output_text, input_image, refusal",
            "type": "string",
        },
        "text": {"type": "string"},
        "image_url": _NULLABLE_STRING,
        "file_id": _NULLABLE_STRING,
        "detail": {"type": "string"},
    },
}

_ITEM: JsonSchema = {
    "type": "object",
    "description": "A message ({role, content} or type 'message'), a function_call the "
    "model made ({call_id, name, arguments}) or a function_call_output ({call_id, output}: "
    "the client's result). Results the input ends with resume the turn waiting on those "
    "calls; earlier calls and results are replayed as text. Output items of this service "
    "sent back (reasoning, shell_call, apply_patch_call, mcp_call, web_search_call and "
    "their outputs) are accepted and not replayed; other item types are refused.",
    "properties": {
        "type": {"type": "string"},
        "role": {"enum": ["user", "system", "developer", "assistant"]},
        "content": {"type": ["string", "array", "null"], "items": _PART},
        "call_id": {"type": "string", "minLength": 1},
        "name": {"type": "string"},
        "arguments": {"type": "string"},
        "output": {"type": ["string", "array"], "items": _PART},
    },
}

#: A tool the client offers: a function (other types are refused by hand).
_TOOL: JsonSchema = {
    "type": "object",
    "required": ["type"],
    "description": "A function of the client's {type: 'function', name, description, "
    "parameters, strict}: codex offers it to the model, and a call of it ends the response "
    "with function_call items. strict is accepted; the arguments are not constrained to "
    "the schema. Other tool types (web_search, file_search, mcp, …) are refused.",
    "properties": {
        "type": {"type": "string"},
        "name": {"type": "string", "minLength": 1},
        "description": {"type": ["string", "null"]},
        "parameters": {"type": ["object", "null"]},
        "strict": {"type": ["boolean", "null"]},
    },
}

BODY = BodySchema(
    "CreateResponseRequest",
    {
        "title": "CreateResponseRequest",
        "type": "object",
        "description": "A Responses API request. Accepted and ignored: "
        + "; ".join(f"{name} ({why})" for name, why in IGNORED.items())
        + ". Refused with a 400: tools other than functions, tool_choice required or "
        "naming a function, background: true, prompt, conversation.",
        "required": ["input"],
        "properties": {
            "model": {"type": ["string", "null"], "minLength": 1},
            "input": {"type": ["string", "array"], "items": _ITEM, "minItems": 1},
            "instructions": _NULLABLE_STRING,
            "stream": {"type": ["boolean", "null"]},
            "store": {"type": ["boolean", "null"]},
            "background": {"type": ["boolean", "null"]},
            "previous_response_id": {"type": ["string", "null"], "minLength": 1},
            "metadata": {
                "type": ["object", "null"],
                "maxProperties": 16,
                "additionalProperties": {"type": "string", "maxLength": 512},
            },
            "reasoning": {
                "type": ["object", "null"],
                "properties": {
                    "effort": {"enum": [*sorted(REASONING_EFFORTS), None]},
                    "summary": {"enum": [*SUMMARIES, None]},
                    "generate_summary": {"enum": [*SUMMARIES, None]},
                },
            },
            "text": {
                "type": ["object", "null"],
                "properties": {
                    "format": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"enum": ["text", "json_object", "json_schema"]},
                            "name": {"type": "string"},
                            "schema": {"type": "object"},
                            "strict": {"type": ["boolean", "null"]},
                            "description": {"type": "string"},
                        },
                    },
                    "verbosity": {"enum": ["low", "medium", "high", None]},
                },
            },
            "tools": {"type": ["array", "null"], "items": _TOOL},
            "tool_choice": {
                "anyOf": [{"enum": ["none", "auto", "required", None]}, {"type": "object"}],
                "description": "auto (the default) and none (the model is offered no "
                "function) are honoured; required or a named tool are refused (400): codex "
                "cannot make the model call a function.",
            },
            "parallel_tool_calls": {"type": ["boolean", "null"]},
            "max_output_tokens": {"type": ["integer", "null"], "minimum": 1},
            "max_tool_calls": {"type": ["integer", "null"], "minimum": 0},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "top_p": _NULLABLE_NUMBER,
            "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
            "truncation": {"enum": ["auto", "disabled", None]},
            "user": _NULLABLE_STRING,
            "safety_identifier": _NULLABLE_STRING,
            "prompt_cache_key": _NULLABLE_STRING,
            "prompt_cache_retention": _NULLABLE_STRING,
            "service_tier": _NULLABLE_STRING,
            "include": {"type": ["array", "null"], "items": {"type": "string"}},
            "stream_options": {"type": ["object", "null"]},
            "prompt": {"type": ["object", "null"]},
            "conversation": {"type": ["string", "object", "null"]},
        },
    },
)

_KNOWN = frozenset(BODY.schema["properties"])


@attrs.frozen
class ResponsesRequest:
    model: str | None
    stream: bool
    store: bool
    #: The turn: its text and images' text, instructions, history, effort,
    #: summary and output schema (``thread_id``/``cwd`` are the route's).
    turn: TurnRequest
    #: The turn's own images (its trailing user messages').
    images: tuple[Image, ...]
    #: This request's input as replayable Responses items (history and the
    #: new messages), for a fresh thread of a later request of the chain.
    items: tuple[dict[str, Any], ...]
    previous_response_id: str | None
    #: What the response object echoes back.
    echo: dict[str, Any]
    #: The client's results of the model's function calls (call id → text)
    #: the input ends with: they resume the turn waiting on those calls.
    tool_results: dict[str, str] = attrs.field(factory=dict)


def _refused(param: str, message: str) -> ApiError:
    return bad_request(message, param=param, code="unsupported_parameter")


def _check_fields(data: dict[str, Any]) -> None:
    for name in data:
        if name not in _KNOWN:
            raise bad_request(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    for index, tool in enumerate(data.get("tools") or ()):
        kind = tool["type"]
        if kind != "function":
            raise _refused(
                f"tools[{index}].type",
                f"tools of type {kind!r} are not supported: only function tools (the client's "
                "functions) are; codex runs its own tools (commands, patches, web search, MCP)",
            )
        if "name" not in tool:
            raise bad_request(
                f"Missing required parameter: 'tools[{index}].name'.",
                param=f"tools[{index}].name",
                code="missing_required_parameter",
            )
    tool_choice = data.get("tool_choice")
    if tool_choice == "required" or isinstance(tool_choice, dict):
        raise _refused(
            "tool_choice",
            f"tool_choice {orjson.dumps(tool_choice).decode()} is not supported: codex cannot "
            "make the model call a function; leave tool_choice unset, auto or none",
        )
    if data.get("background"):
        raise _refused(
            "background",
            "background: true is not supported: every response runs while its request is open",
        )
    if data.get("prompt") is not None:
        raise _refused("prompt", "prompt templates are not supported; send input")
    if data.get("conversation") is not None:
        raise _refused(
            "conversation",
            "conversations are not supported; continue a response with previous_response_id",
        )


@attrs.define
class _Input:
    """The input items as they are read, in order."""

    limits: ImageLimits
    instructions: list[str] = attrs.Factory(list)
    #: (role, parts, text, images) of user and assistant messages and
    #: function results (role "tool"); parts are Responses content parts,
    #: images as data URLs.
    messages: list[tuple[str, list[dict[str, Any]], str, list[Image]]] = attrs.Factory(list)
    images: int = 0
    #: The function results since the last message (call id → text).
    results: dict[str, str] = attrs.Factory(dict)
    #: The functions the input's calls named (call id → name).
    names: dict[str, str] = attrs.Factory(dict)

    def add_message(self, role: str, content: Any, where: str) -> None:
        if content is None:
            content = []
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        texts: list[str] = []
        images: list[Image] = []
        parts: list[dict[str, Any]] = []
        for index, part in enumerate(content):
            at = f"{where}.content[{index}]"
            kind = part["type"]
            if kind in ("input_text", "output_text", "text"):
                text = part.get("text")
                if not isinstance(text, str):
                    raise bad_request(f"{at}.text is required", param=f"{at}.text")
                texts.append(text)
                parts.append(
                    {"type": "output_text" if role == "assistant" else "input_text", "text": text}
                )
            elif kind == "refusal":
                continue
            elif kind == "input_image":
                if role in ("assistant", "system", "developer"):
                    raise bad_request(
                        f"{at}: images are taken in user messages only", param=f"{at}.type"
                    )
                url = part.get("image_url")
                if not isinstance(url, str):
                    what = "file ids are not supported" if part.get("file_id") else "it is missing"
                    raise bad_request(
                        f"{at}.image_url: send the image as a data URL ({what})",
                        param=f"{at}.image_url",
                    )
                image = from_url(url, f"{at}.image_url", self.limits)
                self.images += 1
                images.append(image)
                parts.append(input_image(image))
            else:
                raise bad_request(
                    f"{at}: content parts of type {kind!r} are not supported; "
                    "send input_text or input_image",
                    param=f"{at}.type",
                )
        text = "\n\n".join(texts)
        if role in ("system", "developer"):
            if text:
                self.instructions.append(text)
        elif parts:
            self.messages.append((role, parts, text, images))

    def add(self, index: int, item: dict[str, Any]) -> None:
        where = f"input[{index}]"
        kind = item.get("type", "message")
        if kind == "function_call":
            call_id = _required(item, "call_id", where)
            name = self.names[call_id] = _required(item, "name", where)
            self._add_text("assistant", call_text(name, _required(item, "arguments", where)))
            return
        if kind == "function_call_output":
            call_id = _required(item, "call_id", where)
            if call_id in self.results:
                raise bad_request(
                    f"{where}.call_id: a second output for the call {call_id!r}",
                    param=f"{where}.call_id",
                )
            output = self.results[call_id] = _output_text(item.get("output"), where)
            self._add_text("tool", f"[result of {self.names.get(call_id, call_id)}]\n{output}")
            return
        if kind in OWN_OUTPUT_TYPES:
            return
        if kind != "message":
            raise bad_request(
                f"{where}: input items of type {kind!r} are not supported; send messages",
                param=f"{where}.type",
            )
        role = item.get("role")
        if role is None:
            raise bad_request(f"{where}.role is required", param=f"{where}.role")
        self.results = {}  # results before a message are history
        self.add_message(role, item.get("content"), where)

    def _add_text(self, role: str, text: str) -> None:
        kind = "output_text" if role == "assistant" else "input_text"
        self.messages.append((role, [{"type": kind, "text": text}], text, []))


def _required(item: dict[str, Any], field: str, where: str) -> str:
    value = item.get(field)
    if not isinstance(value, str):
        raise bad_request(
            f"Missing required parameter: '{where}.{field}'.",
            param=f"{where}.{field}",
            code="missing_required_parameter",
        )
    return value


def _output_text(output: Any, where: str) -> str:
    """A function_call_output's output: a string, or text parts."""
    if isinstance(output, str):
        return output
    if output is None:
        raise bad_request(
            f"Missing required parameter: '{where}.output'.",
            param=f"{where}.output",
            code="missing_required_parameter",
        )
    texts: list[str] = []
    for index, part in enumerate(output):
        at = f"{where}.output[{index}]"
        if part["type"] not in ("input_text", "output_text", "text"):
            raise bad_request(
                f"{at}: function results of type {part['type']!r} are not supported; send text",
                param=f"{at}.type",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise bad_request(f"{at}.text is required", param=f"{at}.text")
        texts.append(text)
    return "".join(texts)


def call_text(name: str, arguments: str) -> str:
    """A function call as the model's history shows it (as chat shows one)."""
    return f"[called {name} {arguments}]"


def dynamic_tools(tools: Any, tool_choice: Any) -> tuple[dict[str, object], ...]:
    """The client's function tools as codex dynamic tools (none with
    tool_choice "none"); ``tools`` as the request (or its echo) has them."""
    if tool_choice == "none":
        return ()
    return tuple(
        {
            "type": "function",
            "name": tool["name"],
            "description": tool.get("description") or "",
            "inputSchema": tool.get("parameters") or {"type": "object", "properties": {}},
        }
        for tool in tools or ()
        if tool.get("type") == "function"
    )


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool["name"],
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def _item(role: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A replayable message (a function's result is the user's)."""
    return {"type": "message", "role": "user" if role == "tool" else role, "content": parts}


def parse_responses_request(
    data: Any,
    limits: ImageLimits,
    *,
    default_effort: str | None = None,
    summary: str | None = "auto",
    client_tools: bool = False,
) -> ResponsesRequest:
    """Validate a Responses body (a 400 naming the ``param`` otherwise) and build its turn.

    ``client_tools``: function tools go to codex, and results the input ends
    with are to resume a turn; else tools are echoed only, and results are
    input text like any other.
    """
    BODY.check(data)
    _check_fields(data)
    reading = _Input(limits)
    raw_input = data["input"]
    if isinstance(raw_input, str):
        reading.add_message("user", raw_input, "input")
    else:
        for index, item in enumerate(raw_input):
            reading.add(index, item)
    check_count(range(reading.images), limits, "input")

    messages = reading.messages
    results = reading.results if client_tools else {}
    first_new = len(messages)
    # Results the input ends with are the new input (or resume a turn);
    # results before a user message are history.
    new_roles = ("user", "tool") if messages and messages[-1][0] == "tool" else ("user",)
    while first_new > 0 and messages[first_new - 1][0] in new_roles:
        first_new -= 1
    if first_new == len(messages):
        raise bad_request("input must end with a user message: the turn's input", param="input")
    new = messages[first_new:]
    text = "\n\n".join(t for _, _, t, _ in new if t)
    images = tuple(image for *_, message_images in new for image in message_images)
    if not text.strip() and not images:
        raise bad_request("the input's last user message must not be empty", param="input")
    if not results and turn_input_too_long(text):
        raise bad_request(
            f"Invalid 'input': string too long. Expected at most {MAX_TURN_INPUT_CHARS} "
            f"characters in the new user message(s), but got {len(text)} "
            "(codex takes at most that many characters as a turn's input).",
            param="input",
            code="string_above_max_length",
        )

    instructions = data.get("instructions")
    developer = "\n\n".join(filter(None, [instructions, *reading.instructions])) or None
    reasoning = data.get("reasoning") or {}
    effort = reasoning.get("effort") or default_effort
    summary = reasoning.get("summary") or reasoning.get("generate_summary") or summary
    model = data.get("model")
    turn = TurnRequest(
        text=text,
        model=model,
        developer_instructions=developer,
        history=tuple(_item(role, parts) for role, parts, _, _ in messages[:first_new]),
        effort=effort,
        summary=summary,
        tools=dynamic_tools(data.get("tools"), data.get("tool_choice")) if client_tools else (),
    )
    text_config = data.get("text") or {}
    text_format = text_config.get("format") or {"type": "text"}
    if text_format["type"] == "json_schema":
        schema = text_format.get("schema")
        if not isinstance(schema, dict):
            raise bad_request(
                "text.format.schema is required for json_schema", param="text.format.schema"
            )
        if not isinstance(text_format.get("name"), str):
            raise bad_request(
                "text.format.name is required for json_schema", param="text.format.name"
            )
        turn = with_schema(turn, schema)
    elif text_format["type"] == "json_object":
        turn = with_json_mode(turn)

    store = data.get("store")
    echo = {
        "instructions": instructions,
        "metadata": data.get("metadata") or {},
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "text": {"format": text_format, "verbosity": text_config.get("verbosity") or "medium"},
        "temperature": data.get("temperature"),
        "top_p": data.get("top_p"),
        "max_output_tokens": data.get("max_output_tokens"),
        "max_tool_calls": data.get("max_tool_calls"),
        "parallel_tool_calls": data.get("parallel_tool_calls", True) is not False,
        "tool_choice": data.get("tool_choice") or "auto",
        "tools": [_echo_tool(tool) for tool in data.get("tools") or ()],
        "truncation": data.get("truncation") or "disabled",
        "user": data.get("user"),
        "background": False,
        "store": store is not False,
    }
    return ResponsesRequest(
        model=model,
        stream=bool(data.get("stream")),
        store=store is not False,
        turn=turn,
        images=images,
        items=tuple(_item(role, parts) for role, parts, _, _ in messages),
        previous_response_id=data.get("previous_response_id"),
        echo=echo,
        tool_results=dict(results),
    )
