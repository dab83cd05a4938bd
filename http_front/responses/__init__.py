"""The OpenAI Responses API door: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}``."""
