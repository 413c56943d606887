"""Valkey replies as Python values: text, hashes, and numbers as Lua writes them. Every part
of the engine that reads raw replies decodes them here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def text(value: Any) -> str:
    """A reply item as text: bytes decoded (invalid UTF-8 replaced), a number as written,
    nothing (None, or an error in a pipeline's replies) as ``""``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None or isinstance(value, Exception) else str(value)


def decode_hash(raw: Any) -> dict[str, str]:
    """An HGETALL reply as text (anything else, e.g. an error in a pipeline, as empty)."""
    if not isinstance(raw, dict):
        return {}
    return {text(key): text(value) for key, value in raw.items()}


def decode_fields(names: Sequence[str], values: Sequence[Any]) -> dict[str, str]:
    """An HMGET reply as text by field name; absent fields omitted."""
    return {name: text(value) for name, value in zip(names, values) if value is not None}


def lua_integer(value: Any) -> int:
    """A number as Lua writes it (``%.14g``: ``100``, ``1e+15``); ValueError if it is none."""
    written = text(value)
    try:
        return int(written)
    except ValueError:
        try:
            return int(float(written))
        except OverflowError:
            raise ValueError(f"not a finite number: {written!r}") from None


def optional_integer(value: Any) -> int | None:
    """A stored number, or None when it is absent or malformed."""
    try:
        return lua_integer(value) if value not in (None, b"", "") else None
    except ValueError:
        return None
