"""Which conversation a request belongs to, and what kind of request it is."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from ..blocks import strip_bridge_markup
from ..images import Image


class RequestKind(enum.Enum):
    CONVERSATION = "conversation"  # a turn of a known chat
    STATELESS = "stateless"  # no key: history replayed into a fresh thread
    TASK = "task"  # title/tags/follow-ups: never touches the chat's thread


def header(headers: Sequence[tuple[bytes, bytes]], name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in headers:
        if key.lower() == wanted:
            return value.decode("latin-1").strip()
    return None


def conversation_key(
    headers: Sequence[tuple[bytes, bytes]], body: dict[str, Any], header_names: Sequence[str]
) -> str | None:
    """The conversation id: a configured header, else ``metadata.conversation_id``.

    Never the body's ``user``: in OpenAI's API that names the end user, who may
    have any number of chats at once; taking it as a conversation would run
    them one after another on one thread, each replacing the others' history.
    """
    for name in header_names:
        value = header(headers, name)
        if value:
            return value
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("conversation_id"), str):
        return str(metadata["conversation_id"]) or None
    return None


def is_background_task(
    headers: Sequence[tuple[bytes, bytes]], body: dict[str, Any], messages: Sequence[Any]
) -> bool:
    """OpenWebUI's title/tags/follow-up requests (see OPENWEBUI.md)."""
    task = header(headers, "x-openwebui-task")
    if task:
        return True
    if body.get("stream") or body.get("tools"):
        return False
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if len(users) != 1 or len(messages) != 1:
        return False
    content = users[0].get("content")
    return isinstance(content, str) and content.lstrip().startswith("### Task:")


def signature(role: str, text: str, images: Sequence[Image] = ()) -> str:
    """A message's identity: role + content (its images' digests included),
    whitespace and bridge markup aside."""
    if role == "assistant":
        text = strip_bridge_markup(text)
    normal = " ".join(text.split())
    if not images:
        return hashlib.sha256(orjson.dumps([role, normal])).hexdigest()[:24]
    digests = [image.digest for image in images]
    return hashlib.sha256(orjson.dumps([role, normal, digests])).hexdigest()[:24]


def workspace_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:20]
