"""``usesearch models list|pull`` and ``usesearch embed``: the model presets, their
weights, and one image's segments ranked by texts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from usesearch.cli import options as opts
from usesearch.cli.photo_limits import PhotoLimits, with_photo_limits
from usesearch.errors import UsesearchError
from usesearch.models.weights import UNREADABLE

app = opts.Typer()
models_app = opts.Typer(help="Model presets and their weights.", no_args_is_help=True)


@models_app.command("list")
@opts.user_errors
def models_list(as_json: opts.JsonOpt = False) -> None:
    """Show each preset and whether its weights are on this machine."""
    from usesearch.masks.sam3_weights import sam3_status
    from usesearch.models.presets import PRESETS
    from usesearch.models.weights import preset_status, usesearch_home

    if as_json:  # one row per component: a script checks "present" before a long run
        rows = [
            {"preset": preset.name, **_status_row(status)}
            for preset in PRESETS.values()
            for status in preset_status(preset)
        ]
        rows += [{"preset": "--masker sam2", **_status_row(status)} for status in _sam2_statuses()]
        rows.append({"preset": "--refine sam3", **_status_row(sam3_status())})
        print(json.dumps(rows, indent=1))
        return
    table = Table(title=f"usesearch presets (USESEARCH_HOME={usesearch_home()})")
    for column in ("preset", "component", "weights", "status", "location"):
        table.add_column(column, overflow="fold")
    for preset in PRESETS.values():
        for i, status in enumerate(preset_status(preset)):
            if not status.needed:
                state, where = Text("seeded random", style="cyan"), ""
            elif status.present:
                state, where = Text("present", style="green"), str(status.path)
            else:
                state, where = _absent(status)
            table.add_row(preset.name if i == 0 else "", status.component, status.name, state, where)
        table.add_section()
    for i, status in enumerate(_sam2_statuses()):  # pulled as sam2:MODEL
        state, where = (Text("present", style="green"), str(status.path)) if status.present else _absent(status)
        table.add_row("--masker sam2" if i == 0 else "", status.component, status.name, state, where)
    table.add_section()
    sam3 = sam3_status()  # query --refine sam3 (the tiny preset's indexes refine with a seeded tiny SAM 3)
    state, where = (Text("present", style="green"), str(sam3.path)) if sam3.present else _absent(sam3)
    table.add_row("--refine sam3", sam3.component, sam3.name, state, where)
    opts.console.print(table)


def _sam2_statuses() -> list:
    """SAM 2.1's checkpoints (``models pull sam2:MODEL``), the seeded tiny one aside."""
    from usesearch.masks.sam2_models import SAM2_MODELS, sam2_status

    return [sam2_status(name) for name, cfg in SAM2_MODELS.items() if cfg.checkpoint is not None]


def _absent(status) -> tuple[Text, str]:
    """A needed file's state where it is not usable: unreadable, damaged or missing."""
    if status.fault == UNREADABLE:
        return Text("unreadable", style="red"), f"{status.path}: give this user read permission"
    if status.fault is not None:
        return Text("damaged", style="red"), f"{status.path}: {status.fault}; delete it, pull again"
    return Text("missing", style="red"), f"put at {status.expected}"


def _status_row(status) -> dict:
    return {
        "component": status.component,
        "weights": status.name,
        "needed": status.needed,
        "present": status.present,
        "fault": status.fault,  # a file found that cannot be whole (truncated, not weights)
        "path": str(status.path) if status.path else None,
        "expected": status.expected,
        "source": status.source,
    }


@models_app.command("pull")
@opts.user_errors
def models_pull(
    preset: Annotated[
        str,
        typer.Argument(help="Preset whose weights to fetch, sam2:MODEL for --masker sam2, or sam3 for --refine sam3."),
    ],
) -> None:
    """Download a preset's missing weights (CLIP, DINOv2, SAM), a SAM 2.1 model's, or SAM 3's, into their caches."""
    from usesearch.models.presets import PRESETS, get_preset
    from usesearch.models.weights import pull

    if preset == "sam3":
        from usesearch.masks.sam3_weights import pull_sam3

        done = pull_sam3()
    elif preset.startswith("sam2:"):
        from usesearch.masks.sam2_models import pull_sam2

        done = pull_sam2(preset.split(":", 1)[1])
    else:
        from usesearch.models.weights import preset_status

        if preset not in PRESETS:
            raise UsesearchError(
                f"unknown preset {preset!r}: pull one of {', '.join(PRESETS)}, sam2:MODEL (--masker sam2) "
                "or sam3 (--refine sam3)"
            )
        if not any(status.needed for status in preset_status(get_preset(preset))):
            opts.console.print(f"preset {preset!r} has no weights to pull: its models are seeded random")
            return
        done = pull(get_preset(preset))
    for line in done or [f"all weights of {preset!r} are already present"]:
        opts.console.print(line)


@app.command()
@opts.user_errors
@with_photo_limits
def embed(
    image: Annotated[Path, typer.Argument(help="An image file.", exists=True, dir_okay=False)],
    text: Annotated[
        list[str],
        typer.Argument(help="One or more texts to rank the segments by."),
        opts.Formerly("-t", "--text", note="`embed -t TEXT` is now `embed IMAGE TEXT...`"),
    ],
    preset: opts.PresetOpt = None,
    embedder: opts.EmbedderOpt = None,
    head: opts.HeadOpt = None,
    k: opts.TopKOpt = 3,
    device: opts.DeviceOpt = None,
    precision: Annotated[  # (no SAM here: the shared option's help named it)
        str,
        typer.Option(
            "--precision",
            help="What the image towers compute in: auto (bfloat16 on a GPU that has it, else float32), float32, "
            "or bfloat16.",
        ),
    ] = "auto",
    as_json: opts.JsonOpt = False,
    *,
    limits: PhotoLimits,
) -> None:
    """Propose segments in one image (weight-free superpixel masker) and rank them per text."""
    if not all(t.strip() for t in text):  # (said by the text model, once it had loaded: 6-9 s)
        raise UsesearchError("cannot embed an empty text")
    rgb = limits.read(image)  # a FIFO, a bomb, a broken file: refused before the models load
    if head is None:  # (a head names its own preset, read with it)
        from usesearch.models.weights import refuse_missing_clip

        refuse_missing_clip(preset)

    from usesearch.masks.maskers import FelzenszwalbMasker
    from usesearch.models.factory import choose_preset, load_model
    from usesearch.models.presets import resolve_embedder

    preset = choose_preset(preset, head)
    embedder = resolve_embedder(preset, embedder, head)
    model = load_model(preset, embedder=embedder, device=device, head=head, precision=precision)
    _print_ranking(model, image, rgb, FelzenszwalbMasker(), text, k, as_json)


def _print_ranking(model, name: Path | str, rgb, masker, texts: list[str], top: int, as_json: bool = False) -> None:
    import json

    import numpy as np

    from usesearch.masks.proposals import proposal_masks

    proposals = masker(rgb)
    if not proposals:
        typer.echo(f"{name}: no segments found", err=as_json)
        if as_json:
            print("[]")
        return
    vectors = model.embed_segments(rgb, proposal_masks(proposals, rgb.shape[:2]))
    scores = vectors @ model.embed_text(texts).T
    if as_json:  # one row per (text, rank), named as query --json names a hit's fields
        rows = [
            {
                "text": query,
                "rank": rank,
                "score": float(scores[i, j]),
                "image": str(name),
                "bbox": list(proposals[i].bbox),
                "area": int(proposals[i].area),
                "mask": proposals[i].rle,
                "model": model.fingerprint,
            }
            for j, query in enumerate(texts)
            for rank, i in enumerate(np.argsort(-scores[:, j])[:top], 1)
        ]
        print(json.dumps(rows, indent=1))
        return
    table = Table(title=f"{name}: {len(proposals)} segments, model {model.fingerprint}")
    for column in ("text", "rank", "score", "bbox (x, y, w, h)", "area"):
        table.add_column(column)
    for j, query in enumerate(texts):
        for rank, i in enumerate(np.argsort(-scores[:, j])[:top], 1):
            table.add_row(
                query if rank == 1 else "",
                str(rank),
                f"{scores[i, j]:.3f}",
                str(proposals[i].bbox),
                str(proposals[i].area),
            )
    opts.console.print(table)
