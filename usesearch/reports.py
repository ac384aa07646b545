"""What a batch run over many images reports: counts, time, and each failure (and a recall, as said)."""

from __future__ import annotations

from dataclasses import dataclass, field

from usesearch.errors import ModelOutputError, failure_words

# A run whose first this many failures are a model's NaN (``ModelOutputError``), with no
# photo done yet, stops: the model as run is at fault, and every later photo would fail
# the same way after its full cost (an archive's worth of hours).
MODEL_FAULTS_TO_STOP = 8


def recall_shown(recall: float, target: float) -> str:
    """A recall with two decimals, more where two show one under ``target`` as reaching
    it (0.9988 under a target of 1 read "1.00, under its target 1.0")."""
    for digits in range(2, 7):
        shown = f"{recall:.{digits}f}"
        if recall >= target or float(shown) < target:
            return shown
    return repr(recall)


def counted(n: int, noun: str, nouns: str | None = None) -> str:
    """``counted(1, "image")`` is "1 image", ``counted(2, "image")`` "2 images": a summary
    read by people says "1 image indexed", not "1 images"."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


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
        self.failures.append((path, f"{type(exc).__name__}: {failure_words(exc)}{note}"))
        if self.done == 0 and type(exc).__name__ == ModelOutputError.__name__:  # (a Ray worker's keeps the name)
            faults = [why for _, why in self.failures if why.startswith(ModelOutputError.__name__)]
            if len(faults) >= MODEL_FAULTS_TO_STOP:
                first = faults[0].partition(": ")[2]
                raise ModelOutputError(
                    f"stopped: the first {len(faults)} photos all failed as the first did ({first}); they are"
                    " recorded (`usesearch failures`), and --retry-failed runs them again"
                )
