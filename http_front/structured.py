"""Structured output, for any front door.

A JSON Schema (OpenAI ``response_format: json_schema``, Responses
``text.format: json_schema``, an Ollama ``format`` schema) becomes codex's
per-turn ``outputSchema``: codex sends it to the model as the Responses
request's ``text.format = {type: "json_schema", strict: true, name:
"codex_output_schema", schema}`` for that turn only. Plain JSON mode
(``json_object``, Ollama ``"format": "json"``) has no schema to give, and a
strict schema cannot say "any object", so the turn's text asks for one JSON
object instead. Either way the answer is returned as the model gave it.
"""

from __future__ import annotations

from typing import Any

import attrs

from supervisor import TurnRequest

#: Appended to the turn's text in JSON mode.
JSON_MODE_NOTE = "Answer with a single JSON object and nothing else: no prose, no code fences."


def with_schema(turn: TurnRequest, schema: dict[str, Any]) -> TurnRequest:
    return attrs.evolve(turn, output_schema=schema)


def with_json_mode(turn: TurnRequest) -> TurnRequest:
    return attrs.evolve(turn, text=f"{turn.text}\n\n{JSON_MODE_NOTE}")
