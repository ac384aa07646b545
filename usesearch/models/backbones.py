"""Frozen backbones: open_clip CLIP and timm DINOv2, real or seeded-random.

Both are returned in eval mode with ``requires_grad`` off; the USE encoder keeps
them that way.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from usesearch.errors import UsesearchError, first_line
from usesearch.models.config import ClipConfig, DinoConfig
from usesearch.models.weights import clip_status, dino_status, require

if TYPE_CHECKING:
    # open_clip ships no type information, so to mypy its CLIP is Any; the name still says what
    # the field holds. timm is typed: DINOv2 is its VisionTransformer.
    from open_clip import CLIP
    from timm.models.vision_transformer import VisionTransformer


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Deterministic random init without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# The random draws of an initialisation, where a strict load sets every parameter after
# (``weights_to_come``): each fills the middle of its distribution instead, in one pass.
# Filled, not left as allocated: torch's trunc_normal_ redraws until every value lies
# within its bounds, and would loop on whatever the memory held (nor is arithmetic done
# on denormal or NaN garbage). Filling constants is cheap and stays as it is.
_MEAN = {nn.init.normal_: ("mean", 1, 0.0), torch.Tensor.normal_: ("mean", 1, 0.0)}  # name, position, default
_RANGE = {nn.init.uniform_: (("a", 1, 0.0), ("b", 2, 1.0)), torch.Tensor.uniform_: (("from", 1, 0.0), ("to", 2, 1.0))}
# The init functions whose middle is 0. In torch 2.14 only kaiming_uniform_ dispatches to a
# mode itself; the others draw through Tensor.normal_/uniform_, filled above (listed for
# versions where they dispatch: a dispatched function's own draws would escape the mode).
_CENTRED = frozenset(
    {
        nn.init.trunc_normal_,
        nn.init.kaiming_uniform_,
        nn.init.kaiming_normal_,
        nn.init.xavier_uniform_,
        nn.init.xavier_normal_,
        nn.init.orthogonal_,
    }
)


def _arg(args: tuple, kwargs: dict, name: str, at: int, default: float) -> float:
    return float(kwargs.get(name, args[at] if len(args) > at else default))


class _NoRandomInit(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.erfinv_:  # (timm's truncated normal, on a filled uniform)
            return args[0]
        if func in _MEAN or func in _RANGE or func in _CENTRED:
            tensor = args[0] if args else kwargs["tensor"]
            if func in _MEAN:
                value = _arg(args, kwargs, *_MEAN[func])
            elif func in _RANGE:
                low, high = _RANGE[func]
                value = (_arg(args, kwargs, *low) + _arg(args, kwargs, *high)) / 2
            else:
                value = 0.0
            with torch.no_grad():
                return tensor.fill_(value)
        return func(*args, **kwargs)


@contextlib.contextmanager
def weights_to_come(coming: bool = True) -> Iterator[None]:
    """Build a model whose every parameter a strict load from a file sets next: its random
    initialisation is not drawn, which costs more than reading the file (CLIP L/14-336
    2.4 s -> 0.4 s, SAM ViT-H 3.4 s -> 0.5-0.9 s on 2 cores). In this thread alone: a torch
    function mode is per thread, so a seeded random model built beside it is unchanged.
    Only around a load that refuses a file lacking any parameter, which would otherwise
    keep whatever memory held. ``coming=False`` (a seeded random model): init as usual."""
    with _NoRandomInit() if coming else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    # The local file is already resolved; keep hub clients from reaching out
    # (and from retrying for ~50 s) for anything else while the model builds.
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # open_clip warns "initialized randomly" on the root logger; for the seeded
    # presets that is the intent, not news.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


@dataclass
class Clip:
    """A whole open_clip model (image and text towers) plus its tokenizer and normalisation."""

    model: CLIP
    tokenizer: object
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_image_size: int  # what the crop embedder feeds the image tower

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def width(self) -> int:
        return int(self.model.visual.transformer.width)

    @property
    def num_blocks(self) -> int:
        return len(self.model.visual.transformer.resblocks)


def build_clip(cfg: ClipConfig, preset_name: str, native_size: bool = False, text_only: bool = False) -> Clip:
    """Build CLIP with its image tower at ``cfg.image_size`` (the USE grid; open_clip
    resizes the positional embedding of loaded weights to it), or at the size it was
    trained at when ``native_size`` (the crop embedder). ``text_only`` (a query's text
    side): from a safetensors file, only the text tower's weights are read, into a
    model built on the meta device whose image tower is never allocated (``l14-336``:
    a peak of 4.0 GB, now 1.7 GB); from another file, as usual."""
    from usesearch.models.clip_library import open_clip

    if cfg.custom_config is not None and open_clip.get_model_config(cfg.model_name) is None:
        from usesearch.models.presets import MODEL_CONFIG_DIR

        open_clip.add_model_config(MODEL_CONFIG_DIR / f"{cfg.model_name}.json")
    kwargs = {} if native_size else {"force_image_size": cfg.image_size}
    if cfg.pretrained is None:
        with seeded(cfg.seed), _quiet_root_logger():
            model = open_clip.create_model(cfg.model_name, pretrained=None, **kwargs)
        pre: dict[str, Any] = {}
    else:
        path = require(clip_status(cfg), preset_name)
        pre = open_clip.get_pretrained_cfg(cfg.model_name, cfg.pretrained) or {}
        quick_gelu = bool(pre.get("quick_gelu"))
        if text_only and path.suffix == ".safetensors":
            # Built on the meta device: no weight is allocated until the file's text tower
            # is assigned (the image tower never is).
            with _quiet_hub(), _quiet_root_logger(), torch.device("meta"):
                model = open_clip.create_model(
                    cfg.model_name, pretrained=None, force_quick_gelu=quick_gelu, device="meta", **kwargs
                )
            # The image tower's shapes, to check the file's against (its header alone): a CLIP
            # of another patch size has this text tower's, and its text vectors would go unnoticed.
            image_tower = {f"visual.{name}": list(weight.shape) for name, weight in model.visual.state_dict().items()}
            model.visual = None
            _load_text_tower(model, path, cfg.model_name, preset_name, image_tower)
            _rebuild_causal_mask(model)
        else:
            # open_clip loads a full checkpoint strictly (``load_checkpoint(strict=True)``); a
            # big_vision .npz goes through a loader of its own, which is not.
            with (
                _quiet_hub(),
                _other_weights(path, cfg.model_name, preset_name),
                weights_to_come(path.suffix != ".npz"),
            ):
                model = open_clip.create_model(
                    cfg.model_name, pretrained=str(path), force_quick_gelu=quick_gelu, **kwargs
                )
    native = open_clip.get_model_config(cfg.model_name)["vision_cfg"]["image_size"]
    return Clip(
        model=freeze(model),
        tokenizer=open_clip.get_tokenizer(cfg.model_name),
        mean=tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)),
        native_image_size=int(native if isinstance(native, int) else native[0]),
    )


def _load_text_tower(
    model: nn.Module, path: Path, model_name: str, preset_name: str, image_tower: dict[str, list[int]]
) -> None:
    """Every weight of ``model`` but its image tower's, from the safetensors file at
    ``path``, strictly: a weight missing, one the model lacks or one of another shape,
    the image tower's included (``image_tower``: name -> shape), is
    refused in one line (the model was built without its random init, so nothing may
    stay unloaded). The image tower's weights are checked from the file's header and
    never read. As open_clip's loader: a ``module.`` prefix (a DDP-wrapped model's
    file) is dropped, and the shapes it adapts are taken (``_loads_as``)."""
    from safetensors import safe_open

    from usesearch.models.clip_library import open_clip

    state = model.state_dict()  # (its image tower is dropped already)
    expected = {name: list(weight.shape) for name, weight in state.items()} | image_tower
    with safe_open(str(path), framework="pt") as file:
        stored = list(file.keys())
        strip = len("module.") if stored and stored[0].startswith("module.") else 0  # open_clip checks the first
        names = {name[strip:]: name for name in stored}
        if names.keys() != expected.keys():
            odd = sorted(names.keys() ^ expected.keys())
            raise _another_model(path, model_name, preset_name, f"{len(odd)} weights differ, e.g. {odd[0]}")
        for name, want in expected.items():  # (ViT-L's and ViT-B's text towers share their names, not their shapes)
            shape = list(file.get_slice(names[name]).get_shape())
            if not _loads_as(name, shape, want):
                raise _another_model(path, model_name, preset_name, f"{name} is {shape} there, {want} in the model")
    weights = _copied_out(path, names, state)
    open_clip.model.resize_text_pos_embed(
        weights, model
    )  # open_clip's loader does, for a file of another context length
    model.load_state_dict({name: w.reshape(state[name].shape) for name, w in weights.items()}, strict=True, assign=True)


TEXT_READ_BYTES = 128 << 20  # the file's pages mapped at once while the text tower is read


def _copied_out(path: Path, names: dict[str, str], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights of ``state`` (name -> the model's tensor) copied out of the file's
    memory map, each as it is read: a tensor left on the map ties the model to the file
    (a file written over in place changes the vectors of a running server; one cut short
    kills it with a bus error). The map is opened again after each ``TEXT_READ_BYTES``,
    so the pages read stop counting toward the process's memory as the copies grow:
    else its peak is the copies plus every page they came from."""
    from safetensors import safe_open

    weights: dict[str, torch.Tensor] = {}
    pending = list(state.items())
    while pending:
        read = 0
        with safe_open(str(path), framework="pt") as file:
            while pending and read < TEXT_READ_BYTES:
                name, want = pending.pop(0)
                weights[name] = file.get_tensor(names[name]).to(want.dtype, copy=True)
                read += weights[name].nbytes
    return weights


def _loads_as(name: str, shape: list[int], want: list[int]) -> bool:
    """Whether a file's weight of ``shape`` loads where the model's is ``want``, as
    open_clip's loader takes it: the position embeddings resized (the text's to the
    model's context, the image's from a square grid plus its class token), a logit
    scale of one value in either of its shapes, anything else as it is."""
    if name in ("positional_embedding", "visual.positional_embedding") and len(shape) == 2 == len(want):
        tokens = shape[0] - (name != "positional_embedding")  # the image's class token
        return shape[1] == want[1] and (name == "positional_embedding" or math.isqrt(tokens) ** 2 == tokens > 0)
    if name in _ONE_VALUE:
        return math.prod(shape) == 1 == math.prod(want)
    return shape == want


def _rebuild_causal_mask(model: nn.Module) -> None:
    """The text tower's causal mask, a buffer no file holds (open_clip builds it in
    ``__init__``), by open_clip's own rule, for a model built on the meta device; any
    other tensor left there is a bug said in one line, never a model half loaded."""
    from usesearch.models.clip_library import open_clip

    mask = getattr(model, "attn_mask", None)
    if isinstance(mask, torch.Tensor) and mask.is_meta:
        model.attn_mask = open_clip.transformer.TextTransformer.build_causal_mask(
            SimpleNamespace(num_pos=mask.shape[0])
        )
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise UsesearchError(
            f"the text side left {len(left)} tensors unloaded, e.g. {left[0]}: a bug, please report it"
        )


_ONE_VALUE = ("logit_scale", "logit_bias")  # a scalar or a 1-d parameter, by open_clip's version


def _another_model(path, model_name: str, preset_name: str, detail: str) -> UsesearchError:
    """A weights file of another model at this one's path, said in one line."""
    return UsesearchError(
        f"{path} holds weights of another model than {model_name} ({detail}): delete it and run "
        f"`usesearch models pull {preset_name}`"
    )


def build_dino(cfg: DinoConfig, preset_name: str) -> VisionTransformer:
    import timm

    kwargs = dict(img_size=cfg.image_size, dynamic_img_size=True, num_classes=0, **cfg.overrides)
    if not cfg.pretrained:
        with seeded(cfg.seed):
            model = timm.create_model(cfg.timm_name, pretrained=False, **kwargs)
    else:
        path = require(dino_status(cfg), preset_name)
        # timm loads strictly here: it relaxes only for a classifier of another size or other
        # input channels, and num_classes=0 is DINOv2's own (DINOv2-L: 2.3 s -> 0.3 s to build);
        # an .npz goes through a model's own loader, which need not be.
        with _quiet_hub(), _other_weights(path, cfg.timm_name, preset_name), weights_to_come(path.suffix != ".npz"):
            model = timm.create_model(
                cfg.timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
            )
    # timm.create_model is typed to return any nn.Module; the DINOv2 names build a VisionTransformer.
    return cast("VisionTransformer", freeze(model))


def dino_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # timm attaches pretrained_cfg to the models it builds, outside the class's declared attributes.
    cfg = cast(dict[str, Any], model.pretrained_cfg)
    return tuple(cfg["mean"]), tuple(cfg["std"])


@contextlib.contextmanager
def _other_weights(path, model_name: str, preset_name: str) -> Iterator[None]:
    """A whole file of another model's weights at the right path (a ViT-L file where
    ViT-B-16's belongs) fails as torch's wall of missing keys: said in one line."""
    try:
        yield
    except RuntimeError as exc:
        if "state_dict" not in str(exc):
            raise
        raise _another_model(path, model_name, preset_name, first_line(exc)) from None
