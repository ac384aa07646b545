"""What a batch run over many images reports: counts, time, and each failure."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunReport:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, "ErrorType: message")

    def record_failure(self, path: str, exc: BaseException, kept: bool = False) -> None:
        """``kept``: the file was indexed before, and what it had stays in the index."""
        self.failed += 1
        note = " (indexed before: its segments are kept)" if kept else ""
        self.failures.append((path, f"{type(exc).__name__}: {exc}{note}"))
