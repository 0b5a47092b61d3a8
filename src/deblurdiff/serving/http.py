"""Reading an image out of an HTTP request, within limits, before anything is decoded.

Order of checks (cheapest first, so hostile input costs the server as little as possible):

1. ``Content-Length`` above ``max_body_bytes`` -> 413 without keeping a byte of the body;
2. the body is streamed and counted, so a chunked or lying upload is cut off at the limit -> 413;
   (before either 413 the rest of the body is read and discarded, within ``max_drain_bytes`` and
   ``drain_timeout_s``: clients that send the whole body before reading, such as ``urllib`` and
   ``requests``, otherwise lose the answer to "connection reset by peer")
3. the media type: raw image bytes or multipart field ``image``; anything else -> 415;
4. the image header (``imageio.probe``): not an image -> 400, GIF/BMP/TIFF/... -> 415,
   width x height above ``max_pixels`` -> 413 (decompression bombs never reach the decoder).
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from deblurdiff.imageio import ImageDecodeError, probe
from deblurdiff.serving.limits import ACCEPTED_FORMATS, ApiError, Limits

__all__ = ["check_image", "extract_image", "read_body"]

# Raw-body content types we accept and then sniff. curl's --data-binary default
# (application/x-www-form-urlencoded) is included so `curl --data-binary @photo.jpg` just works.
_RAW_TYPES = {"", "application/octet-stream", "application/x-www-form-urlencoded",
              "image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/webp"}


def _too_large(size: str, limit: int) -> ApiError:
    return ApiError(413, "payload_too_large",
                    f"body: {size} bytes exceeds the limit of {limit} bytes (max_body_bytes)")


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request body, refusing more than ``max_body_bytes`` (by header first, then while streaming)."""
    max_bytes = limits.max_body_bytes
    stream = request.stream()  # one iterator: a refused body is drained from where reading stopped
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", f"Content-Length: not an integer ({declared!r})") from None
        if length > max_bytes:
            if length <= limits.max_drain_bytes:  # past it the drain would stop short anyway
                await _drain(stream, limits)
            raise _too_large(str(length), max_bytes)
    chunks: list[bytes] = []
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:  # chunked upload or a Content-Length that lied
            await _drain(stream, limits)
            raise _too_large(f"more than {max_bytes}", max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(stream: AsyncIterator[bytes], limits: Limits) -> None:
    """Read and discard the rest of a refused body, at most ``max_drain_bytes`` within ``drain_timeout_s``.

    Why: the server closes the connection after answering; if the client's bytes are still unread at
    that moment the kernel resets the connection, and a client that is still sending (no
    ``Expect: 100-continue``) never reads the 413. The bounds keep a refused upload from tying up the
    server: an endless or very slow body is cut off (then the client may see the reset, not the 413).
    """
    drained = 0
    try:
        async with asyncio.timeout(limits.drain_timeout_s):
            async for chunk in stream:
                drained += len(chunk)
                if drained > limits.max_drain_bytes:
                    return
    except (TimeoutError, ClientDisconnect):
        return


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def extract_image(request: Request, body: bytes) -> bytes:
    """The image bytes: the raw body, or the multipart form field ``image``."""
    media_type = _media_type(request)
    if media_type == "multipart/form-data":
        return await _multipart_image(request, body)
    if media_type not in _RAW_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {media_type!r}: send PNG, JPEG or WebP bytes as the body "
                       "(image/png, image/jpeg, image/webp, application/octet-stream) or multipart/form-data "
                       "with the field 'image'")
    return body


async def _multipart_image(request: Request, body: bytes) -> bytes:
    # The body was already read (and counted) by read_body; replay it to Starlette's form parser.
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except Exception as exc:  # noqa: BLE001 - malformed multipart is the client's fault
        raise ApiError(400, "bad_request", f"multipart body: cannot parse ({exc})") from None
    try:
        field = form.get("image")
        if field is None:
            raise ApiError(422, "missing_field", "image: multipart form has no field named 'image'")
        if not isinstance(field, UploadFile):
            raise ApiError(422, "invalid_field", "image: expected a file upload, got a text field")
        return await field.read()
    finally:
        await form.close()


def check_image(data: bytes, limits: Limits) -> tuple[int, int, str]:
    """``(width, height, format)`` from the header; raises 400/413/415 without decoding pixels."""
    try:
        width, height, fmt = probe(data)
    except ImageDecodeError as exc:
        reason = str(exc)
        if "too many pixels" in reason:  # Pillow's own bomb guard fired while reading the header
            raise ApiError(413, "too_many_pixels", f"image: {reason}") from None
        raise ApiError(400, "invalid_image", f"image: not a decodable image: {reason}") from None
    if fmt not in ACCEPTED_FORMATS:
        raise ApiError(415, "unsupported_media_type",
                       f"image: format {fmt.upper()} is not accepted; send PNG, JPEG or WebP")
    if width * height > limits.max_pixels:
        raise ApiError(413, "too_many_pixels",
                       f"image: {width}x{height} = {width * height} pixels exceeds the limit of "
                       f"{limits.max_pixels} (max_pixels)")
    if width < 1 or height < 1:
        raise ApiError(400, "invalid_image", f"image: has zero size ({width}x{height})")
    return width, height, fmt
