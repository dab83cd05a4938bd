"""Ollama request bodies: their schemas, and the codex turn each asks for.

``/api/chat`` works like chat completions: system messages become the
thread's developer instructions, the last message (from the user) is the
turn's input with its ``images``, everything between is replayed as history
(earlier images as ``input_image`` parts). ``/api/generate`` is one prompt,
stateless. What codex cannot do is refused with a 400 that says why, never
dropped silently; what does not apply to a remote model (sampling options,
``keep_alive``) is accepted and ignored, and the schemas' descriptions say so.
"""

from __future__ import annotations

from typing import Any

import attrs

from supervisor import TurnRequest

from ..blocks import strip_bridge_markup
from ..chat.request import TOOL_SCHEMA, dynamic_tools, tools_signature
from ..errors import bad_request
from ..images import Image, ImageLimits, check_count, from_base64, input_image
from ..schema import BodySchema, JsonSchema
from ..structured import with_schema
from ..turn_input import MAX_TURN_INPUT_CHARS, turn_input_too_long
from .tools import Called, Returned, ToolReturn, canonical, history_digest

#: Ollama's ``think`` levels → codex's reasoning effort.
THINK_LEVELS = {"low": "low", "medium": "medium", "high": "high", "max": "xhigh"}
#: The tag every name carries in Ollama's listings; the only one accepted.
TAG = "latest"

_IGNORED_OPTIONS = (
    "options: only `stop` is honoured; sampling and runtime options (temperature, top_p, "
    "top_k, seed, num_ctx, num_predict, …) are accepted and ignored: codex runs the model "
    "with its own settings, and its turn/start has no bound on the output length "
    "(num_predict)."
)

_STRING_OR_NULL: JsonSchema = {"type": ["string", "null"]}
_MODEL: JsonSchema = {
    "type": "string",
    "minLength": 1,
    "description": "A model of /api/tags, with or without its `:latest` tag.",
}
_THINK: JsonSchema = {
    "anyOf": [{"type": "boolean"}, {"enum": list(THINK_LEVELS)}, {"type": "null"}],
    "description": "true / a level: the answer's `thinking` carries the model's reasoning "
    "summary (a level sets codex's reasoning effort; `max` is codex's `xhigh`); false: the "
    "model's lowest reasoning effort and no thinking shown; absent: the service's default "
    "effort, thinking shown.",
}
_FORMAT: JsonSchema = {
    "anyOf": [{"enum": ["", "json"]}, {"type": "object"}, {"type": "null"}],
    "description": '"json": the answer is one JSON object (asked of the model in the turn\'s '
    "text); a JSON Schema: codex's structured output (the model's `text.format` json_schema, "
    "strict).",
}
_OPTIONS: JsonSchema = {
    "type": ["object", "null"],
    "description": _IGNORED_OPTIONS,
    "properties": {
        "stop": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                {"type": "null"},
            ],
            "description": "Stop sequences: the answer ends before the first one, the turn "
            "is ended there and done_reason is `stop`.",
        },
    },
}
_IMAGES: JsonSchema = {
    "type": ["array", "null"],
    "items": {"type": "string"},
    "description": "Base64 images (PNG, JPEG, GIF or WebP).",
}
_COMMON: dict[str, JsonSchema] = {
    "model": _MODEL,
    "stream": {
        "type": ["boolean", "null"],
        "description": "NDJSON stream (default) or one JSON object.",
    },
    "think": _THINK,
    "format": _FORMAT,
    "options": _OPTIONS,
    "keep_alive": {
        "anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}],
        "description": "Accepted and ignored: codex's models are not loaded per request.",
    },
    "logprobs": {
        "type": ["boolean", "null"],
        "description": "true is refused: codex gives no log probabilities.",
    },
    "top_logprobs": {
        "type": ["integer", "null"],
        "description": "Accepted and ignored (see logprobs).",
    },
}

CHAT_BODY = BodySchema(
    "OllamaChatRequest",
    {
        "type": "object",
        "description": "Ollama's chat request. " + _IGNORED_OPTIONS,
        "required": ["model"],
        "properties": {
            **_COMMON,
            "messages": {
                "type": ["array", "null"],
                "description": "The whole chat; none (or an empty list) only checks the "
                "model, like Ollama's load request.",
                "items": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {
                        "role": {"enum": ["system", "user", "assistant", "tool"]},
                        "content": _STRING_OR_NULL,
                        "images": _IMAGES,
                        "thinking": {
                            **_STRING_OR_NULL,
                            "description": "Accepted and ignored (earlier thinking is not "
                            "replayed).",
                        },
                        "tool_calls": {
                            "type": ["array", "null"],
                            "description": "The functions an assistant message called "
                            "(given back as history; before the `tool` messages that end the "
                            "chat, they name the calls the results answer).",
                            "items": {
                                "type": "object",
                                "required": ["function"],
                                "properties": {
                                    "id": _STRING_OR_NULL,
                                    "type": _STRING_OR_NULL,
                                    "function": {
                                        "type": "object",
                                        "required": ["name"],
                                        "properties": {
                                            "name": {"type": "string"},
                                            "arguments": {},
                                            "index": {"type": ["integer", "null"]},
                                        },
                                    },
                                },
                            },
                        },
                        "tool_name": {
                            **_STRING_OR_NULL,
                            "description": "On a `tool` message: the function whose result it is.",
                        },
                        "tool_call_id": {
                            **_STRING_OR_NULL,
                            "description": "On a `tool` message: the `id` of the call it "
                            "answers (optional: results are matched by tool_name, else by "
                            "order).",
                        },
                    },
                },
            },
            "tools": {
                "type": ["array", "null"],
                "items": TOOL_SCHEMA,
                "description": "The client's functions: the model may call them (codex "
                "dynamic tools). A call ends the answer with `message.tool_calls` (done_reason "
                "`stop`) while codex's turn waits; the next request, ending with one `tool` "
                "message per call after that assistant message, goes on with the same turn. "
                'Accepted and ignored when the operator set client_tools = "never".',
            },
        },
    },
)

GENERATE_BODY = BodySchema(
    "OllamaGenerateRequest",
    {
        "type": "object",
        "description": "Ollama's generate request: one stateless turn. " + _IGNORED_OPTIONS,
        "required": ["model"],
        "properties": {
            **_COMMON,
            "prompt": {
                **_STRING_OR_NULL,
                "description": "The turn's text; empty or absent only checks the model "
                "(Ollama's load / unload request).",
            },
            "system": {
                **_STRING_OR_NULL,
                "description": "The turn's developer instructions.",
            },
            "images": _IMAGES,
            "suffix": {
                **_STRING_OR_NULL,
                "description": "A non-empty suffix is refused: codex's models do not fill in "
                "the middle.",
            },
            "template": {
                **_STRING_OR_NULL,
                "description": "Accepted and ignored: codex has no prompt template.",
            },
            "raw": {
                "type": ["boolean", "null"],
                "description": "Accepted; without a template the prompt always goes to codex "
                "as it is.",
            },
            "context": {
                "type": ["array", "null"],
                "items": {"type": "integer"},
                "description": "Deprecated in Ollama; a non-empty context is refused (it is "
                "never returned here): keep a conversation with /api/chat.",
            },
            "width": {"type": ["integer", "null"], "description": "Accepted and ignored."},
            "height": {"type": ["integer", "null"], "description": "Accepted and ignored."},
            "steps": {"type": ["integer", "null"], "description": "Accepted and ignored."},
        },
    },
)

SHOW_BODY = BodySchema(
    "OllamaShowRequest",
    {
        "type": "object",
        "description": "`model` (or the older `name`); `verbose` is accepted and ignored.",
        "properties": {
            "model": _MODEL,
            "name": _MODEL,
            "verbose": {"type": ["boolean", "null"]},
        },
        "anyOf": [{"required": ["model"]}, {"required": ["name"]}],
    },
)


def base_name(name: str) -> str:
    """A model name without its ``:latest`` tag (other tags stay: they name nothing)."""
    return name.removesuffix(":" + TAG)


@attrs.frozen
class Thinking:
    """What ``think`` asks for."""

    #: The answer carries the reasoning (``thinking``).
    shown: bool = True
    #: The reasoning effort asked for (None: the service's default).
    effort: str | None = None
    #: ``think: false``: the model's lowest effort, no summaries.
    off: bool = False


def thinking_of(think: bool | str | None) -> Thinking:
    if think is False:
        return Thinking(shown=False, off=True)
    if isinstance(think, str):
        return Thinking(effort=THINK_LEVELS[think])
    return Thinking()


@attrs.frozen
class OllamaRequest:
    """A chat or generate request, as the door runs it."""

    #: The model as the client named it (echoed in every answer).
    model: str
    stream: bool
    turn: TurnRequest
    thinking: Thinking = Thinking()
    stops: tuple[str, ...] = ()
    #: Every message as (role, text): what a conversation's history
    #: signatures are made of (with the images).
    messages: tuple[tuple[str, str], ...] = ()
    #: Each message's images, in the order of ``messages``.
    message_images: tuple[tuple[Image, ...], ...] = ()
    #: ``format: "json"``: the answer must be one JSON object.
    json_mode: bool = False
    #: Digest of every message sent (what calls made in answer are booked under).
    history: str = ""
    #: The results of the model's calls the messages end with (client tools on).
    returned: ToolReturn | None = None

    #: Nothing to run (no messages / no prompt): Ollama's load (or, with
    #: ``keep_alive`` 0, unload) request.
    load_only: str | None = None

    @property
    def images(self) -> tuple[Image, ...]:
        """The last message's images: the turn's own."""
        return self.message_images[-1] if self.message_images else ()


def _common(data: dict[str, Any]) -> tuple[bool, Thinking, tuple[str, ...]]:
    if data.get("logprobs"):
        raise bad_request(
            "logprobs is not supported: codex gives no log probabilities", param="logprobs"
        )
    options = data.get("options") or {}
    stop = options.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    stream = data.get("stream")
    return stream is not False, thinking_of(data.get("think")), tuple(s for s in stops if s)


def _turn(
    data: dict[str, Any],
    text: str,
    instructions: str | None,
    thinking: Thinking,
    default_effort: str | None,
    summary: str | None,
) -> TurnRequest:
    """The turn of ``text``, with what ``think`` and ``format`` ask for."""
    turn = TurnRequest(
        text=text,
        model=base_name(data["model"]),
        developer_instructions=instructions,
        effort=thinking.effort or default_effort,
        summary="none" if thinking.off else summary,
    )
    fmt = data.get("format")
    if isinstance(fmt, dict):
        return with_schema(turn, fmt)
    return turn


def _json_mode(data: dict[str, Any]) -> bool:
    """``format: "json"``; its note goes on whichever turn runs (http_front/turns.py)."""
    return data.get("format") == "json"


def _load_only(data: dict[str, Any]) -> str:
    keep_alive = data.get("keep_alive")
    return "unload" if keep_alive in (0, "0", "0s", "0m") else "load"


def _check_length(text: str, param: str) -> None:
    if turn_input_too_long(text):
        raise bad_request(
            f"{param} is {len(text)} characters long; codex takes at most "
            f"{MAX_TURN_INPUT_CHARS} as a turn's input",
            param=param,
            code="string_above_max_length",
        )


def _images(data: dict[str, Any], param: str, limits: ImageLimits) -> tuple[Image, ...]:
    return tuple(
        from_base64(text, f"{param}[{index}]", limits)
        for index, text in enumerate(data.get("images") or ())
    )


def _history_item(role: str, text: str, images: tuple[Image, ...]) -> dict[str, object]:
    if role == "assistant":
        return {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text}],
        }
    parts: list[dict[str, object]] = [{"type": "input_text", "text": text}] if text else []
    parts.extend(input_image(image) for image in images)
    return {"type": "message", "role": "user", "content": parts}


def _calls_text(calls: Any) -> str:
    """An assistant message's function calls, as the model's history shows them."""
    return "".join(
        f"\n[called {call['function']['name']} {canonical(call['function'].get('arguments'))}]"
        for call in calls or ()
    )


def _returned(raw_messages: list[dict[str, Any]]) -> ToolReturn | None:
    """The ``tool`` messages the chat ends with, after the assistant message
    whose calls they answer (None: it does not end so)."""
    first = len(raw_messages)
    while first > 0 and raw_messages[first - 1]["role"] == "tool":
        first -= 1
    if first == len(raw_messages) or first == 0:
        return None
    calling = raw_messages[first - 1]
    if calling["role"] != "assistant" or not calling.get("tool_calls"):
        return None
    calls = tuple(
        Called(call["function"]["name"], call["function"].get("arguments"), call.get("id"))
        for call in calling["tool_calls"]
    )
    results = tuple(
        Returned(m.get("content") or "", m.get("tool_name"), m.get("tool_call_id"))
        for m in raw_messages[first:]
    )
    return ToolReturn(history_digest(raw_messages[: first - 1]), calls, results, first)


def parse_chat(
    data: dict[str, Any],
    *,
    limits: ImageLimits,
    default_effort: str | None = None,
    summary: str | None = "auto",
    client_tools: bool = False,
) -> OllamaRequest:
    """Check an ``/api/chat`` body and build its turn."""
    CHAT_BODY.check(data)
    stream, thinking, stops = _common(data)
    model: str = data["model"]
    raw_messages: list[dict[str, Any]] = data.get("messages") or []
    if not raw_messages:
        turn = TurnRequest(text="", model=base_name(model))
        return OllamaRequest(model, stream, turn, thinking, load_only=_load_only(data))
    every_image = [i for m in raw_messages for i in (m.get("images") or ())]
    check_count(every_image, limits, "messages")

    instructions: list[str] = []
    conversation: list[tuple[str, str, tuple[Image, ...]]] = []
    for index, message in enumerate(raw_messages):
        where = f"messages[{index}]"
        role: str = message["role"]
        text: str = message.get("content") or ""
        images = _images(message, f"{where}.images", limits)
        if images and role in ("system", "assistant"):
            raise bad_request(
                f"{where}.images: images are taken on user messages only",
                param=f"{where}.images",
            )
        if role == "system":
            if text:
                instructions.append(text)
        elif role == "tool":
            name = message.get("tool_name") or "tool"
            conversation.append(("user", f"[result of {name}]\n{text}", images))
        elif role == "assistant":
            # Our own cards come back verbatim; the model must not read them as text.
            text = strip_bridge_markup(text) + _calls_text(message.get("tool_calls"))
            conversation.append((role, text.strip(), ()))
        else:
            conversation.append((role, text, images))

    if not conversation or conversation[-1][0] != "user":
        raise bad_request("the last non-system message must come from the user", param="messages")
    last = f"messages[{len(raw_messages) - 1}].content"
    _, prompt, images = conversation[-1]
    if not prompt.strip() and not images:
        raise bad_request(f"{last} must not be empty", param=last)
    _check_length(prompt, last)
    history = tuple(
        _history_item(role, text, pics) for role, text, pics in conversation[:-1] if text or pics
    )
    turn = _turn(data, prompt, "\n\n".join(instructions) or None, thinking, default_effort, summary)
    tools = dynamic_tools(data) if client_tools else ()
    # A thread keeps the tools it started with: another tool set, another thread.
    signed_tools = (("tools", tools_signature(tools)),) if tools else ()
    return OllamaRequest(
        model,
        stream,
        attrs.evolve(turn, history=history, tools=tools),
        thinking,
        stops,
        messages=(
            *signed_tools,
            *(("system", text) for text in instructions),
            *((role, text) for role, text, _ in conversation),
        ),
        message_images=(
            *(() for _ in signed_tools),
            *(() for _ in instructions),
            *(pics for _, _, pics in conversation),
        ),
        json_mode=_json_mode(data),
        history=history_digest(raw_messages),
        returned=_returned(raw_messages) if client_tools else None,
    )


def parse_generate(
    data: dict[str, Any],
    *,
    limits: ImageLimits,
    default_effort: str | None = None,
    summary: str | None = "auto",
) -> OllamaRequest:
    """Check an ``/api/generate`` body and build its (stateless) turn."""
    GENERATE_BODY.check(data)
    stream, thinking, stops = _common(data)
    if data.get("suffix"):
        raise bad_request(
            "suffix is not supported: codex's models do not fill in the middle", param="suffix"
        )
    if data.get("context"):
        raise bad_request(
            "context (deprecated) is not supported: this server returns none; keep a "
            "conversation with /api/chat and its messages",
            param="context",
        )
    model: str = data["model"]
    prompt: str = data.get("prompt") or ""
    check_count(data.get("images") or (), limits, "images")
    images = _images(data, "images", limits)
    if not prompt.strip() and not images:
        turn = TurnRequest(text="", model=base_name(model))
        return OllamaRequest(model, stream, turn, thinking, load_only=_load_only(data))
    _check_length(prompt, "prompt")
    turn = _turn(data, prompt, data.get("system") or None, thinking, default_effort, summary)
    return OllamaRequest(
        model,
        stream,
        turn,
        thinking,
        stops,
        messages=(("user", prompt),),
        message_images=(images,),
        json_mode=_json_mode(data),
    )
