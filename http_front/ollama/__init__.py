"""The Ollama API door: ``/api/chat``, ``/api/generate``, ``/api/tags``, … over codex's models."""
