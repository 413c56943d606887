"""The audit log: one JSON line per action tried from the console (who, when, from where,
what, on which execution, and how it went, refusals included), appended to a file the
operator chooses and never rewritten."""

from __future__ import annotations

import json
import threading
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: Entries the audit page shows.
SHOWN_ENTRIES = 200


class AuditLog:
    """Appends entries to ``path`` (created if missing), one JSON object per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)

    def record(self, *, who: str, address: str, action: str, target: str, outcome: str, **details: Any) -> None:
        entry = {
            "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "who": who,
            "address": address,
            "action": action,
            "target": target,
            "outcome": outcome,
            **details,
        }
        line = json.dumps(entry, default=str) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as log:
            log.write(line)

    def recent(self, count: int = SHOWN_ENTRIES) -> list[dict[str, Any]]:
        """The last ``count`` entries, newest first (lines that are not JSON are skipped)."""
        with self._lock, self.path.open(encoding="utf-8") as log:
            lines = deque(log, maxlen=count)
        entries = []
        for line in reversed(lines):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries
