"""A labelled dataset with known errors, indexed by its own masks, for the audit's tests
and ``benchmarks/audit_planted.py``: the synthetic world of shapes
(``training.synthetic``'s scenes, drawn again here, as the layers keep the stages
apart), split into train and val, with each kind of error planted at a known rate:

- swapped: an annotation's class replaced by another;
- overlooked: an object's annotation removed (its proposal stays);
- badly located: an annotation's mask eroded or shifted by a third of its size;
- leaks: train photos copied into val, re-encoded (JPEG) and resized, or byte for byte;
- outliers: an annotation drawn over background, with some class.

Every photo's proposals (SAM's stand-in) are its objects' true masks, one pixel
grown or shrunk at random, and one blob of background. Annotations and proposals are
embedded by the given model and committed through the store, as indexing does."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from usesearch.tasks.shapes import background, shape_mask

from ..folder import db_url_for, writer_lock
from ..index_choice import choose
from ..records import ANNOTATION, PROPOSAL, IndexInfo
from ..store import Store
from .items import LISTS

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220), "yellow": (235, 215, 30)}
SHAPES = ("circle", "square", "triangle")
CLASSES = [f"{c} {s}" for c in COLOURS for s in SHAPES]


@dataclass(frozen=True)
class PlantedConfig:
    photos: int = 120
    size: int = 128
    val_fraction: float = 0.25
    swapped: float = 0.1  # of annotations
    removed: float = 0.1  # of objects: overlooked
    mislocated: float = 0.1  # of annotations
    copied: float = 0.08  # of train photos, into val re-encoded and resized
    exact_copies: int = 1  # train photos copied into val byte for byte
    junk: float = 0.04  # annotations over background, per photo: outliers
    seed: int = 0


@dataclass
class Planted:
    """The truth: review keys of the planted items of each list, and of every item."""

    errors: dict[str, set] = field(default_factory=lambda: {k: set() for k in LISTS})
    annotations: set = field(default_factory=set)  # every "split:annotation id"
    proposals: set = field(default_factory=set)  # every proposal segment id
    val_photos: set = field(default_factory=set)  # image ids of val photos
    copies: set = field(default_factory=set)  # image ids of the copies (in val)
    class_names: list = field(default_factory=lambda: list(CLASSES))


def scene(rng, size: int):
    """(RGB, [(mask, class index)], background blob mask) with 2-3 shapes in a 2x2 layout."""
    rgb, cell, objects = background(rng, size), size // 2, []
    cells = rng.permutation([(0, 0), (1, 0), (0, 1), (1, 1)])
    count = int(rng.integers(2, 4))
    for cx, cy in cells[:count]:
        colour, kind = int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPES)))
        s = int(rng.integers(cell * 5 // 10, cell * 8 // 10))
        x0, y0 = int(cx * cell + rng.integers(2, cell - s - 1)), int(cy * cell + rng.integers(2, cell - s - 1))
        mask = shape_mask(SHAPES[kind], (x0, y0, x0 + s, y0 + s), size)
        rgb[mask] = list(COLOURS.values())[colour]
        objects.append((mask, colour * len(SHAPES) + kind))
    cx, cy = cells[count]  # a free cell: a blob of background
    r = cell // 4
    blob = shape_mask("circle", (cx * cell + r, cy * cell + r, cx * cell + 3 * r, cy * cell + 3 * r), size)
    return rgb, objects, blob


def _jitter(mask: np.ndarray, rng) -> np.ndarray:
    return ndimage.binary_dilation(mask) if rng.random() < 0.5 else ndimage.binary_erosion(mask) | _centre(mask)


def _centre(mask: np.ndarray) -> np.ndarray:
    out = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    out[int(ys.mean()), int(xs.mean())] = True
    return out


def _mislocate(mask: np.ndarray, rng) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    extent = max(int(np.ptp(ys)), int(np.ptp(xs)), 3)
    if rng.random() < 0.5:  # eroded by a third of its size
        eroded = ndimage.binary_erosion(mask, iterations=max(1, extent // 6))
        return eroded if eroded.any() else _centre(mask)
    dy, dx = (rng.choice([-1, 1], 2) * (extent // 3)).tolist()
    return np.roll(mask, (dy, dx), axis=(0, 1))


def _encode(rgb: np.ndarray, fmt: str, scale: float = 1.0) -> tuple[bytes, np.ndarray]:
    image = Image.fromarray(rgb)
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 70} if fmt == "JPEG" else {}))
    data = buffer.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _resize_mask(mask: np.ndarray, hw) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize((hw[1], hw[0]), Image.Resampling.NEAREST), bool)


def write_planted(
    db_dir: str | Path, photos_dir: str | Path, model, config: PlantedConfig = PlantedConfig(), head=None
):
    """Draw the world, plant the errors, write the photos and index them into ``db_dir``
    with ``model`` (loaded from ``head``, where it has one). Returns (``Planted``,
    {image id: (rgb, annotations, proposals)}),
    where each annotation is (segment id, class index, split) and proposals are segment
    ids: what a comparison with another tool needs."""
    from usesearch.masks import rle

    rng = np.random.default_rng(config.seed)
    db_dir, photos_dir = Path(db_dir), Path(photos_dir)
    photos_dir.mkdir(parents=True, exist_ok=True)
    planted, world = Planted(), {}
    with writer_lock(db_dir):
        store = Store(db_url_for(db_dir, None), folder=db_dir)
        store.claim()
        store.set_info(
            IndexInfo(
                preset=model.preset.name,
                embedder=model.kind,
                fingerprint=model.fingerprint,
                head=str(Path(head).resolve()) if head is not None else None,
                dim=model.dim,
                masker="planted",
                masker_params={},
                factory=choose(0, model.dim).factory,
            )
        )
        next_annotation = 1

        def commit(path: Path, data: bytes, rgb, annotations, proposals, split):
            """annotations: [(mask, class, key kinds)], proposals: [(mask, kinds)]."""
            nonlocal next_annotation
            path.write_bytes(data)
            masks = [m for m, _, _ in annotations] + [m for m, _ in proposals]
            vectors = model.embed_segments(rgb, np.stack(masks))
            segments, keys = [], []
            for mask, label, _ in annotations:
                encoded = rle.encode(mask)
                x, y, w, h = rle.bbox(encoded)
                key = f"{split}:{next_annotation}"
                keys.append(key)
                segments.append(
                    dict(x=x, y=y, w=w, h=h, area=rle.area(encoded), rle_counts=encoded["counts"], source=ANNOTATION)
                    | dict(annotation_id=next_annotation, category=CLASSES[label], iscrowd=False, split=split)
                )
                next_annotation += 1
            for mask, _ in proposals:
                encoded = rle.encode(mask)
                x, y, w, h = rle.bbox(encoded)
                segments.append(
                    dict(x=x, y=y, w=w, h=h, area=rle.area(encoded), rle_counts=encoded["counts"], source=PROPOSAL)
                )
            sha = hashlib.sha256(data).hexdigest()
            _, added = store.save_image(str(path).encode(), str(path), sha, rgb.shape[:2], segments, vectors)
            record = store.image_by_path(str(path).encode())
            assert record is not None
            image_id = record.id
            for key, (_, _, kinds) in zip(keys, annotations):
                planted.annotations.add(key)
                for kind in kinds:
                    planted.errors[kind].add(key)
            for sid, (_, kinds) in zip(added[len(annotations) :], proposals):
                planted.proposals.add(sid)
                for kind in kinds:
                    planted.errors[kind].add(sid)
            labelled = [(s, label, split) for s, (_, label, _) in zip(added, annotations)]
            world[image_id] = (rgb, labelled, added[len(annotations) :])
            if split == "val":
                planted.val_photos.add(image_id)
            return image_id

        train_photos = []
        for i in range(config.photos):
            split = "val" if rng.random() < config.val_fraction else "train"
            rgb, objects, blob = scene(rng, config.size)
            annotations: list = []
            proposals: list = []
            for mask, label in objects:
                proposals.append((_jitter(mask, rng), set()))
                if rng.random() < config.removed:
                    proposals[-1][1].add("overlooked")
                    continue
                kinds, shown = set(), mask
                if rng.random() < config.swapped:
                    label = int(rng.choice([c for c in range(len(CLASSES)) if c != label]))
                    kinds.add("swapped")
                elif rng.random() < config.mislocated:
                    shown = _mislocate(mask, rng)
                    kinds.add("badly_located")
                annotations.append((shown, label, kinds))
            if rng.random() < config.junk * len(objects):
                annotations.append((blob, int(rng.integers(len(CLASSES))), {"outliers"}))
            else:
                proposals.append((_jitter(blob, rng), set()))
            data, rgb = _encode(rgb, "PNG")
            image_id = commit(photos_dir / f"{i:05d}.png", data, rgb, annotations, proposals, split)
            if split == "train" and annotations and not any(k for _, _, k in annotations):
                train_photos.append((i, image_id, rgb, annotations, proposals))
        picks = rng.permutation(len(train_photos))
        copies = max(1, round(config.copied * len(train_photos)))
        for n, pick in enumerate(picks[: copies + config.exact_copies]):
            i, source_id, rgb, annotations, proposals = train_photos[pick]
            exact = n >= copies
            if exact:
                data, copied = (photos_dir / f"{i:05d}.png").read_bytes(), rgb
            else:
                data, copied = _encode(rgb, "JPEG", 0.75)
            hw = copied.shape[:2]
            clean: list = [(_resize_mask(m, hw), label, set()) for m, label, _ in annotations]
            props: list = [(_resize_mask(m, hw), set()) for m, _ in proposals]
            suffix = "png" if exact else "jpg"
            copy_id = commit(photos_dir / f"copy-{i:05d}.{suffix}", data, copied, clean, props, "val")
            planted.copies.add(copy_id)
            planted.errors["leaks"].add(copy_id)
        store.close()
    return planted, world


def save_truth(path: Path, planted: Planted, world: dict) -> None:
    """The truth and the world ``write_planted`` returned, to reuse an index it wrote:
    JSON and arrays (no pickle: a folder named on a command line may not be trusted
    to hold code)."""
    sets = {name: sorted(value, key=str) for name, value in vars(planted).items() if isinstance(value, set)}
    meta = {
        "sets": sets,
        "errors": {kind: sorted(keys, key=str) for kind, keys in planted.errors.items()},
        "class_names": planted.class_names,
        "world": {str(i): [labelled, list(proposals)] for i, (_, labelled, proposals) in world.items()},
    }
    arrays = {f"rgb{i}": rgb for i, (rgb, _, _) in world.items()}
    np.savez(path, meta=np.array(json.dumps(meta, default=int)), **arrays)


def load_truth(path: Path) -> tuple[Planted, dict]:
    """What ``save_truth`` wrote."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        world = {
            int(i): (data[f"rgb{i}"], [tuple(a) for a in labelled], proposals)
            for i, (labelled, proposals) in meta["world"].items()
        }
    planted = Planted(
        errors={kind: set(keys) for kind, keys in meta["errors"].items()},
        class_names=meta["class_names"],
        **{name: set(values) for name, values in meta["sets"].items()},
    )
    return planted, world
