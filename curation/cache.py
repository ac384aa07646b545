"""Append-only JSONL caches for expensive per-image stage outputs (captions, boxes),
so a re-run after a crash never recomputes what a model already produced."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class StageCache:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data: dict[str, Any] = {}
        if self.path.is_file():
            text = self.path.read_bytes()
            whole = text[: text.rfind(b"\n") + 1]
            if len(whole) < len(text):  # a torn last line: cut, or the next entry would be glued to it
                os.truncate(self.path, len(whole))
            for line in whole.decode("utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn in the middle of an older file
                self._data[entry["key"]] = entry["value"]

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
