"""Images a client sends with its message, for any front door.

A door turns what its API sends (an OpenAI ``image_url`` part, a Responses
``input_image``, an Ollama ``images`` entry) into :class:`Image` values with
:func:`from_data_url`, :func:`from_base64` or :func:`from_url`; each is
checked here: its bytes must be a PNG, JPEG, GIF or WebP image (whatever the
client claims), at most ``max_bytes`` long, and a request carries at most
``max_count`` of them. Remote ``http(s)`` URLs are refused unless the
operator allows them (``image_urls = true``); the bridge never fetches them
itself — codex passes the URL to the model provider.

The turn's own images reach codex as ``localImage`` inputs: :func:`write`
puts them in the conversation's working directory (``.images/``, named by
their digest). Images of earlier messages replayed as history travel inside
the history items as ``input_image`` data URLs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from .errors import ApiError, bad_request

#: Media type → file extension of the image types codex and the model take.
TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}


@attrs.frozen
class ImageLimits:
    #: The largest image, decoded.
    max_bytes: int = 20 * 1024 * 1024
    #: The most images in one request (all messages together).
    max_count: int = 16
    #: Accept ``http(s)`` image URLs (the model provider fetches them).
    allow_urls: bool = False


@attrs.frozen
class Image:
    """A checked image: its bytes and type, or a remote URL."""

    media_type: str = ""
    data: bytes = attrs.field(default=b"", repr=lambda b: f"<{len(b)} bytes>")
    url: str | None = None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data if self.url is None else self.url.encode()).hexdigest()

    def data_url(self) -> str:
        """What a Responses ``input_image`` carries: the URL, or the bytes inline."""
        if self.url is not None:
            return self.url
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode()}"


def sniff(data: bytes) -> str | None:
    """The image type of ``data`` by its first bytes, if it is one we take."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _too_large(param: str, size: int, limits: ImageLimits) -> ApiError:
    return ApiError(
        413,
        f"{param}: the image is {size} bytes; at most {limits.max_bytes} bytes are taken",
        param=param,
        code="image_too_large",
    )


def _checked(data: bytes, param: str, limits: ImageLimits) -> Image:
    if len(data) > limits.max_bytes:
        raise _too_large(param, len(data), limits)
    media_type = sniff(data)
    if media_type is None:
        raise bad_request(
            f"{param}: not an image of a supported type (PNG, JPEG, GIF or WebP)",
            param=param,
            code="invalid_image_format",
        )
    return Image(media_type, data)


def from_base64(text: str, param: str, limits: ImageLimits) -> Image:
    """An image sent as base64 (Ollama's ``images``; a data URL's payload)."""
    # Checked before decoding: 4 base64 characters carry 3 bytes.
    if len(text) > (limits.max_bytes + 2) // 3 * 4 + 4:
        raise _too_large(param, len(text) * 3 // 4, limits)
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param}: not valid base64", param=param, code="invalid_image") from None
    return _checked(data, param, limits)


def from_data_url(url: str, param: str, limits: ImageLimits) -> Image:
    """An image from a ``data:image/…;base64,…`` URL."""
    head, comma, payload = url.partition(",")
    if not comma or not head.startswith("data:") or not head.endswith(";base64"):
        raise bad_request(
            f"{param}: a data URL must look like data:image/png;base64,…",
            param=param,
            code="invalid_image_url",
        )
    return from_base64(payload, param, limits)


def from_url(url: str, param: str, limits: ImageLimits) -> Image:
    """An image by URL: ``data:`` always, ``http(s):`` when the operator allows it."""
    if url.startswith("data:"):
        return from_data_url(url, param, limits)
    if url.startswith(("http://", "https://")):
        if not limits.allow_urls:
            raise bad_request(
                f"{param}: image URLs are not accepted by this service; send the image "
                "inline as a data URL (data:image/png;base64,…)",
                param=param,
                code="image_url_not_allowed",
            )
        return Image(url=url)
    raise bad_request(
        f"{param}: an image URL must be a data: URL (or http(s): where allowed)",
        param=param,
        code="invalid_image_url",
    )


def check_count(images: Sequence[object], limits: ImageLimits, param: str) -> None:
    if len(images) > limits.max_count:
        raise bad_request(
            f"{param}: {len(images)} images; at most {limits.max_count} are taken in one request",
            param=param,
            code="too_many_images",
        )


def input_image(image: Image) -> dict[str, object]:
    """A Responses-API content part for an image of an earlier message."""
    return {"type": "input_image", "image_url": image.data_url()}


async def write(images: Sequence[Image], directory: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Put the turn's images where codex can read them.

    Returns the files (for ``localImage``) and the remote URLs (for ``image``).
    """
    paths: list[str] = []
    urls: list[str] = []
    folder = trio.Path(directory) / ".images"
    for image in images:
        if image.url is not None:
            urls.append(image.url)
            continue
        await folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{image.digest[:32]}.{TYPES[image.media_type]}"
        if not await path.exists():
            await path.write_bytes(image.data)
        paths.append(str(Path(path)))
    return tuple(paths), tuple(urls)
