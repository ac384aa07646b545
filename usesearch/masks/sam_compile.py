"""``torch.compile`` of SAM and the backbones: the mask decoder compiled whole
(``CompiledDecoder``, a GPU's default; its upscaling of the prompts that pass the IoU
filter's gate compiled apart, for any number of them), and ``--compile``'s towers block
by block (``compile_modules``, ``compile_encoder``)."""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Callable
from typing import TypeVar

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import PatchEmbed

from usesearch.devices import out_of_memory_in
from usesearch.errors import first_line
from usesearch.masks.sam_fast import COMPILED_UPSCALING, mask_logits

log = logging.getLogger(__name__)
T = TypeVar("T")

COMPILE_BACKEND = "inductor"


def _row_major_tokens(self: PatchEmbed, x: torch.Tensor) -> torch.Tensor:
    """``PatchEmbed.forward``, its tokens [B, H, W, C] copied into the layout they are
    indexed in, where segment-anything hands the blocks a permuted view of the
    convolution's channels-first output (which every block's residual add keeps)."""
    return self.proj(x).permute(0, 2, 3, 1).contiguous()


def row_major_tokens(encoder: torch.nn.Module) -> None:
    """Route SAM's patch embedding through ``_row_major_tokens`` (in place), for a
    compiled encoder: inductor's CPU code for a block's residual add and layer norm
    over a channels-first float32 tensor and a row-major bfloat16 one (the attention's
    output under autocast) gives NaN (torch 2.14, at 64 channels and more), and every
    mask of the photo came out empty. Not done eagerly: the same values, but another
    float rounding in the blocks' products (~1e-5) than segment-anything's."""
    patch_embed = getattr(encoder, "patch_embed", None)
    if isinstance(patch_embed, PatchEmbed):
        patch_embed.forward = types.MethodType(_row_major_tokens, patch_embed)


def compile_modules(*modules: torch.nn.Module, dynamic: bool | None = None) -> None:
    """``torch.compile`` each module's repeated blocks in place (``--compile``): a
    transformer's layers are one code and one shape, so each kind of block compiles
    once and every other block reuses its code (torch's regional compilation), where
    compiling the whole module traces and compiles every block anew (SAM's ViT-H
    encoder on a 2-core CPU: 18 s of compiling against 61 s). What lies between the
    blocks (patch embedding, necks) stays eager; a module with no repeated blocks is
    compiled whole. Not for SAM's mask decoder, whose layers ``_layer`` reads rather
    than calls: ``CompiledDecoder`` compiles it. Shapes start static (SAM's 1024-px
    canvas, the backbones' letterbox); a second batch size (a run's last group, a
    photo's crops) compiles once more, for any size, where static shapes would compile
    each kind of block for each size until torch's limit (8, shared by all of one
    kind's blocks) and then run the rest uncompiled."""
    for module in modules:
        for region in compile_regions(module):
            region.compile(backend=COMPILE_BACKEND, dynamic=dynamic)


def compile_encoder(encoder: torch.nn.Module) -> None:
    """``--compile`` of SAM's image encoder: ``compile_modules``, its blocks handed
    row-major tokens (``row_major_tokens``: on a CPU in bfloat16, compiled
    blocks gave NaN for the tokens segment-anything lays out)."""
    row_major_tokens(encoder)
    compile_modules(encoder)


def compiled_within(module: torch.nn.Module) -> bool:
    """Whether ``module`` or any module in it was compiled in place (``Module.compile``)."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules())


def run_or_uncompile(module: torch.nn.Module, run: Callable[[], T], what: str) -> T:
    """``run()``, a call of ``module``. Where it raises and parts of ``module`` are
    compiled in place (``--compile``, or a GPU run of 1,000 photos by default), the
    compiler's failure (no C compiler for Triton, a card Triton does not support, a
    torch bug) costs the compiling, not the photos: ``run()`` again uncompiled, with one
    warning naming ``what``, and ``module`` eager from then on. Where the eager run fails
    too, the error is the input's: raised, and compiling stays on. Out of memory (the
    caller's to handle) and Ctrl-C are raised as they come."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - told apart below: the compiler's, the memory's or the input's
        if out_of_memory_in(exc) is not None:
            raise
        undone = _uncompile(module)
        if not undone:
            raise
        try:
            out = run()
        except BaseException:
            _recompile(undone)
            raise
        log.warning("%s could not run compiled (%s: %s): it runs uncompiled", what, type(exc).__name__, first_line(exc))
        return out


def rerun_uncompiled(module: torch.nn.Module, run: Callable[[], T], finite: Callable[[T], bool], said: str) -> T | None:
    """After ``module``'s output came out NaN or infinite: ``run()`` again with every
    part of it that was compiled in place (``--compile``) uncompiled. Finite now: the
    compiler's wrong code (as inductor's CPU bfloat16 code once was), which costs the
    compiling, with one warning (``said``), not the photos; the output, and ``module``
    stays eager. Else None: nothing was compiled, or the model gives NaN eagerly too
    (its own fault, for the caller to raise), and compiling stays on."""
    undone = _uncompile(module)
    if not undone:
        return None
    try:
        out = run()
    except BaseException:  # (out of memory, Ctrl-C): nothing learnt, compiling stays on
        _recompile(undone)
        raise
    if finite(out):
        log.warning(said)
        return out
    _recompile(undone)
    return None


def _uncompile(module: torch.nn.Module) -> list[tuple[torch.nn.Module, Callable]]:
    """Every part of ``module`` compiled in place, made eager; (part, its compiled call)
    each, for ``_recompile`` to put back."""
    undone = [(m, m._compiled_call_impl) for m in module.modules() if m._compiled_call_impl is not None]
    for m, _ in undone:
        m._compiled_call_impl = None
    return undone


def _recompile(undone: list[tuple[torch.nn.Module, Callable]]) -> None:
    for m, call in undone:
        m._compiled_call_impl = call


def compile_regions(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of the outermost lists of two or more modules of one class under
    ``module`` (SAM's ``blocks``, open_clip's ``resblocks``, timm's ``blocks``, our
    per-block LLNs); ``[module]`` where it has none."""
    regions: list[torch.nn.Module] = []
    inside: set[int] = set()  # modules within a region already found (a block's own lists)
    for child in module.modules():
        if id(child) in inside:
            continue
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)) and len(child) >= 2:
            if len({type(block) for block in child}) == 1:
                regions += list(child)
                inside.update(id(m) for block in child for m in block.modules())
    return regions or [module]


class CompiledDecoder:
    """A mask decoder through ``torch.compile``, which ``SamMaskGenerator`` uses by
    default on a GPU. After its attentions and products, what the decoder's time goes
    to is elementwise: the per-prompt image tokens (1,024 x 4,096 x 256 at a 32x32
    grid) through each layer's adds and norms and the upscaling's norm and GELUs,
    each a pass of its own over gigabytes in eager mode (an H200 profile: layer norms
    and adds ~40% of it, at a third of the card's bandwidth). Inductor fuses them; the
    attentions, products and convolutions stay the library's kernels. Outputs equal
    the eager decoder's within float rounding (3e-7 in float32 on a CPU).

    Prompt batches keep their size (all of a grid at once on a GPU), so it compiles
    once a shape; a second shape (a crop layer's grid) compiles a dynamic graph. The
    IoU filter's gate (``upscale_above``) runs between two graphs, and the kept
    prompts' upscaling is compiled apart for any count (one graph, and one for a single
    prompt): compiled in line, each new count compiled the graph after the gate again.
    Where compiling fails (no Triton for this card, a torch bug), or the compiled
    decoder gives NaN or infinite numbers where the eager one does not (a compiler's
    wrong code), one warning and the eager decoder for the rest of the run: a run
    never stops for the compiler.
    Where the eager decoder fails too, the error is the input's: it is raised and the
    compiled decoder stays on. An out-of-memory error, compiling or running, is the
    caller's (it halves the prompt batch). The first run on a machine pays a cold
    compile (tens of seconds); torch keeps the code on disk for later runs."""

    def __init__(self, decoder: torch.nn.Module):
        self.decoder = decoder
        self.compiled = torch.compile(decoder, backend=COMPILE_BACKEND)
        self.failed = False
        self._checked = threading.local()  # this thread's last call: its output checked finite

        def upscaling(hs: torch.Tensor, keys: torch.Tensor, h: int, w: int) -> torch.Tensor:
            return mask_logits(decoder, hs, keys, h, w)

        self.upscaling = torch.compile(upscaling, backend=COMPILE_BACKEND, dynamic=True)

    def returned_finite(self) -> bool:
        """Whether this thread's last call's output was checked finite here: the generator
        then skips its own check (a second pass over the logits and a second read-back)."""
        return getattr(self._checked, "finite", False)

    def __call__(self, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
        self._checked.finite = False
        if self.failed:
            return self.decoder(**inputs)
        try:
            out = self._compiled(inputs)
        except Exception as exc:  # noqa: BLE001 - told apart below: the compiler's, the memory's or the input's
            out_of_memory = out_of_memory_in(exc)
            if out_of_memory is not None:
                raise out_of_memory from None  # the generator halves its prompt batch (even when compiling ran out)
            return self._eagerly(inputs, f"could not be compiled ({type(exc).__name__}: {first_line(exc)})")
        if decoder_finite(out):
            self._checked.finite = True
            return out
        # NaN where the eager decoder gives numbers is the compiler's fault (a CPU's bfloat16
        # code once gave NaN for SAM's encoder); NaN from both is the model's, and the
        # generator's own check says so.
        try:
            return self._eagerly(inputs, "gave NaN or infinite numbers compiled", finite_only=True)
        except _StillNotFinite:
            return out

    def _compiled(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The compiled decoder's output, the gated prompts' upscaling compiled too (in
        this call only: ``COMPILED_UPSCALING``)."""
        token = COMPILED_UPSCALING.set((self.decoder, self.upscaling))
        try:
            return self.compiled(**inputs)
        finally:
            COMPILED_UPSCALING.reset(token)

    def _eagerly(self, inputs: dict, why: str, finite_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The eager decoder's output for ``inputs`` (eager throughout: the upscaling too),
        and eager for the rest of the run, said once; where the eager decoder fails too
        (or, ``finite_only``, gives NaN too), the fault is the input's: raised, and
        compiling stays on."""
        out = self.decoder(**inputs)  # (the input's own error: raised, and compiling stays on)
        if finite_only and not decoder_finite(out):
            raise _StillNotFinite
        self._checked.finite = finite_only
        self.failed = True
        log.warning("SAM's mask decoder %s: it runs uncompiled", why)
        return out


def decoder_finite(out: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Whether a decoder's mask logits and IoUs are all finite (the generator's own check
    and the compiled decoder's; the generator synchronises here anyway). The masks too:
    the compiled upscaling's norm and GELUs are what inductor got wrong in SAM's encoder,
    and NaN logits are empty masks that no later check sees."""
    masks, iou = out  # (a NaN or inf anywhere makes the sum so: one pass, no bool tensor; ~18 ms a CPU batch)
    return bool(torch.isfinite(iou).all() & torch.isfinite(masks.sum(dtype=torch.float32)))  # (one read-back)


class _StillNotFinite(Exception):
    """The eager decoder gave NaN as the compiled one did: not the compiler's fault."""


def decoder_for(sam: Sam, compiled: bool):
    """SAM's mask decoder as the generator calls it: ``CompiledDecoder`` where
    ``compiled``, unless its caller compiled the module already (``Module.compile``)."""
    decoder = sam.mask_decoder
    if not compiled or getattr(decoder, "_compiled_call_impl", None) is not None:
        return decoder
    return CompiledDecoder(decoder)
