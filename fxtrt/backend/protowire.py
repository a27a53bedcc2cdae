"""Protobuf's wire format, the little of it that writing a message in pieces needs.

A message serialises as its fields in field-number order; a length-delimited field is its key
(number and wire type 2, a varint) and its length (a varint) before its bytes. Writing the
pieces of a message in that order gives ``SerializeToString()``'s bytes without the whole.
"""
from __future__ import annotations

from typing import Any, Callable

_LENGTH_DELIMITED = 2


def copy_fields(src: Any, dst: Any, keep: Callable[[Any], bool]) -> None:
    """Every field set on the message ``src`` for which ``keep(field descriptor)`` holds, set on ``dst``."""
    for field, value in src.ListFields():
        if not keep(field):
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def split_fields(message: Any, number: int, kind: Callable[[], Any]) -> tuple[bytes, bytes]:
    """``message``'s fields numbered below ``number`` and above it, each serialised."""
    low, high = kind(), kind()
    copy_fields(message, low, lambda f: f.number < number)
    copy_fields(message, high, lambda f: f.number > number)
    return low.SerializeToString(), high.SerializeToString()


def field_key(number: int, size: int) -> bytes:
    """The key and length of a length-delimited field ``number`` of ``size`` bytes."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(size)


def field_key_size(number: int, size: int) -> int:
    return len(field_key(number, size))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
