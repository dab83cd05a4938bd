"""Images a client sends: checked by their bytes, bounded, written for codex."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from fixtures.images import data_url, png
from http_front.errors import ApiError
from http_front.images import (
    Image,
    ImageLimits,
    check_count,
    from_base64,
    from_data_url,
    from_url,
    input_image,
    sniff,
    write,
)

PNG = png()
LIMITS = ImageLimits()


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"GIF89a....", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"%PDF-1.7", None),
        (b"", None),
    ],
)
def test_sniff_by_the_first_bytes(data: bytes, media_type: str | None) -> None:
    assert sniff(data) == media_type


def test_the_type_comes_from_the_bytes_not_the_claim() -> None:
    image = from_data_url(data_url(PNG, "image/jpeg"), "p", LIMITS)
    assert image.media_type == "image/png"
    assert image.data == PNG


def test_base64_with_line_breaks() -> None:
    text = base64.encodebytes(PNG).decode()
    assert "\n" in text
    assert from_base64(text, "p", LIMITS).data == PNG


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("data:image/png,notbase64", "invalid_image_url"),
        ("data:image/png;base64,@@@", "invalid_image"),
        ("data:image/png;base64," + base64.b64encode(b"text").decode(), "invalid_image_format"),
        ("file:///etc/passwd", "invalid_image_url"),
        ("https://example.com/a.png", "image_url_not_allowed"),
    ],
)
def test_refusals(url: str, code: str) -> None:
    with pytest.raises(ApiError) as caught:
        from_url(url, "messages[0].content[1].image_url", LIMITS)
    assert (caught.value.status, caught.value.code) == (400, code)
    assert caught.value.param == "messages[0].content[1].image_url"


def test_too_large_is_413_before_decoding() -> None:
    limits = ImageLimits(max_bytes=10)
    with pytest.raises(ApiError) as caught:
        from_base64("A" * 1000, "p", limits)
    assert (caught.value.status, caught.value.code) == (413, "image_too_large")
    with pytest.raises(ApiError) as caught:
        from_url(data_url(PNG), "p", limits)
    assert caught.value.status == 413


def test_urls_when_allowed() -> None:
    image = from_url("https://example.com/a.png", "p", ImageLimits(allow_urls=True))
    assert image.url == "https://example.com/a.png"
    assert input_image(image) == {"type": "input_image", "image_url": "https://example.com/a.png"}


def test_count() -> None:
    check_count([1, 2], ImageLimits(max_count=2), "messages")
    with pytest.raises(ApiError) as caught:
        check_count([1, 2, 3], ImageLimits(max_count=2), "messages")
    assert caught.value.code == "too_many_images"


async def test_write_puts_images_in_the_turns_directory(tmp_path: Path) -> None:
    image = Image("image/png", PNG)
    remote = Image(url="https://example.com/a.png")
    paths, urls = await write([image, remote, image], str(tmp_path))
    name = hashlib.sha256(PNG).hexdigest()[:32] + ".png"
    assert paths == (str(tmp_path / ".images" / name),) * 2
    assert urls == ("https://example.com/a.png",)
    assert (tmp_path / ".images" / name).read_bytes() == PNG
