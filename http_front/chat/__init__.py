"""The chat completions front door: request parsing (``request``), the
presentation of pieces as message deltas (``present``), its two encoders
(``stream``: chunks as SSE; ``whole``: one ``chat.completion``) and the
route (``route``)."""
