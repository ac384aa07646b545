"""open_clip, imported without transformers.

open_clip imports transformers when it is installed (for text towers from the Hugging
Face hub, which no preset here uses): 1.6 s of a 4.2 s import on 2 cores, paid by
every process that builds CLIP: each ``usesearch query``, each Ray actor and again at
each of its restarts. Here open_clip is imported once with transformers unimportable,
so its hub text towers are off (its own fallback when transformers is missing), and
transformers is importable again straight after for whoever needs it (curation's
captioner and grounding models). Every import of open_clip goes through this module.
"""

from __future__ import annotations

import sys


def _import_without_transformers() -> None:
    if "open_clip" in sys.modules or "transformers" in sys.modules:
        return  # too late, or already done
    sys.modules["transformers"] = None  # type: ignore[assignment]  # `import transformers` raises ImportError
    try:
        import open_clip  # noqa: F401
    finally:
        del sys.modules["transformers"]


_import_without_transformers()

import open_clip  # noqa: E402

__all__ = ["open_clip"]
