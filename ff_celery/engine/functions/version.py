"""Typed call of ``lua/version.lua``: the library version."""

from __future__ import annotations

from typing import Any

from ff_celery.engine.core.decoding import text
from ff_celery.engine.functions.base import Fcall

__all__ = ["Version"]


class Version(Fcall[str]):
    """``ff_version``: a bare string, not an envelope."""

    function = "ff_version"

    def keys(self) -> list[str]:
        return []

    def argv(self) -> list[str | bytes]:
        return []

    def interpret(self, raw: Any) -> str:
        return text(raw)
