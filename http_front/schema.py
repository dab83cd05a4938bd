"""Request bodies described once, as JSON Schema: checked with it, and
published with it in ``/openapi.json``.

Each front door declares its body as a :class:`BodySchema` (a JSON Schema,
draft 2020-12 compatible, self-contained: no ``$ref``) and its routes as
:class:`Operation` values. The door's parser calls :meth:`BodySchema.check`
first — a compiled validator (fastjsonschema), a few tens of microseconds
for a typical body — so every type, enum, range and required field a client
can get wrong is refused from the same description the OpenAPI document
shows; the parser then only does what a schema cannot say (the last message
must come from the user, …). A rejection names the offending ``param`` the
way OpenAI does (``messages[2].content``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import fastjsonschema

from .errors import bad_request

JsonSchema = dict[str, Any]

_TYPE_PHRASES = {
    "string": "a string",
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a number",
    "array": "an array",
    "object": "an object",
    "null": "null",
}


def _param(path: Sequence[str | int]) -> str | None:
    """``['data', 'messages', '0', 'role']`` → ``messages[0].role``."""
    out = ""
    for part in path[1:]:
        text = str(part)
        if text.isdigit():
            out += f"[{text}]"
        else:
            out += f".{text}" if out else text
    return out or None


def _phrase(schema: Any) -> str:
    """What a value must be, in words, from its schema."""
    if not isinstance(schema, Mapping):
        return "valid"
    if "title" in schema and "type" not in schema:
        return str(schema["title"])
    if "enum" in schema:
        return "one of " + ", ".join(v if isinstance(v, str) else repr(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        named = [_TYPE_PHRASES.get(str(k), str(k)) for k in kind if k != "null"]
        return " or ".join(named) or "null"
    if isinstance(kind, str):
        return _TYPE_PHRASES.get(kind, kind)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            words: list[str] = []
            for branch in schema[key]:
                word = _phrase(branch)
                if word != "null" and word not in words:
                    words.append(word)
            return " or ".join(words)
    return "valid"


def _message(exc: fastjsonschema.JsonSchemaValueException) -> tuple[str, str | None]:
    """A clear message and the param it is about."""
    path = list(exc.path or ["data"])
    rule, rule_value = exc.rule, exc.rule_definition
    param = _param(path)
    where = param or "the request body"
    if rule == "required":
        present = exc.value if isinstance(exc.value, Mapping) else {}
        missing = next((name for name in rule_value or () if name not in present), None)
        if missing is not None:
            param = _param([*path, missing])
            return f"{param} is required", param
        return f"{where} misses a required field", param
    if rule == "type":
        return f"{where} must be {_phrase({'type': rule_value})}", param
    if rule in ("enum", "const"):
        return f"{where} must be {_phrase({rule: rule_value})}", param
    if rule in ("anyOf", "oneOf"):
        return f"{where} must be {_phrase(exc.definition)}", param
    if rule == "minItems":
        # An array whose items have a title counts them by it ("one message").
        items = exc.definition.get("items") if isinstance(exc.definition, Mapping) else None
        noun = items.get("title") if isinstance(items, Mapping) else None
        if noun and rule_value == 1:
            return f"{where} must contain at least one {noun}", param
        return f"{where} must contain at least {rule_value} item(s)", param
    if rule == "maxItems":
        return f"{where} must contain at most {rule_value} item(s)", param
    if rule == "minLength":
        if rule_value == 1:
            return f"{where} must not be empty", param
        return f"{where} must be at least {rule_value} characters long", param
    if rule == "maxLength":
        return f"{where} must be at most {rule_value} characters long", param
    if rule in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        return f"{where} must be {sign[rule]} {rule_value}", param
    if rule == "additionalProperties":
        return f"{where} has a field that is not allowed here", param
    if rule == "pattern":
        return f"{where} has an unexpected format", param
    return f"{where} is not valid: {exc.message.removeprefix('data.').removeprefix('data ')}", param


@attrs.define
class BodySchema:
    """A JSON request body: its OpenAPI component name and its schema."""

    name: str
    schema: JsonSchema
    _validate: Callable[[Any], Any] | None = attrs.field(default=None, init=False, repr=False)

    def check(self, data: Any) -> None:
        """Raise a 400 :class:`ApiError` naming the first thing wrong with ``data``."""
        validate = self._validate
        if validate is None:
            validate = self._validate = fastjsonschema.compile(self.schema)
        try:
            validate(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            message, param = _message(exc)
            raise bad_request(message, param=param) from None


@attrs.frozen
class Operation:
    """One route as ``/openapi.json`` describes it."""

    method: str
    path: str
    summary: str
    tag: str
    description: str = ""
    #: The JSON body, if the route takes one.
    body: BodySchema | None = None
    #: The successful answer's schema (JSON) by media type; ``text/event-stream``
    #: and ``application/x-ndjson`` are described in words.
    responses: Mapping[str, JsonSchema] = attrs.field(factory=dict)
    #: Path parameters: name → description.
    parameters: Mapping[str, str] = attrs.field(factory=dict)
    #: Needs no API key.
    open: bool = False
