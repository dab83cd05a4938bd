"""What codex takes as one turn's input, whatever the front door."""

from __future__ import annotations

#: The most characters (Unicode code points, what ``len`` counts) codex takes
#: as one turn's input: ``turn/start`` refuses more with JSON-RPC error
#: -32602 "Input exceeds the maximum length of 1048576 characters."
#: (``data.input_error_code = "input_too_large"``). The limit applies to the
#: sum of the turn's text items; the history replayed with
#: ``thread/inject_items`` and the developer instructions have none.
#: Measured on codex 0.169.0; tests/test_http_input.py checks it on the binary.
MAX_TURN_INPUT_CHARS = 1_048_576


def turn_input_too_long(text: str) -> bool:
    """Whether codex would refuse ``text`` as a turn's input."""
    return len(text) > MAX_TURN_INPUT_CHARS
