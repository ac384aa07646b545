"""What a command compiles (``usesearch.devices.compiles``), applied to its models:
every command that runs SAM and the towers (``index``, its Ray actors, ``segment``,
``eval``) goes through ``apply_compile``, so they compile alike."""

from __future__ import annotations

from usesearch.masks.amg import SamMaskGenerator
from usesearch.masks.sam_compile import CompiledDecoder, compile_encoder, compile_modules, decoder_for


def apply_compile(compiled: bool | None, models: list, masker) -> None:
    """``compiled`` applied to the embedders ``models`` and ``masker``: True, every model
    compiled; False, none (SAM's generator's GPU defaults turned off: a short run, or
    --no-compile); None, the generator's own defaults."""
    generator = getattr(masker, "generator", None)
    if compiled is False and isinstance(generator, SamMaskGenerator):
        generator.run_eagerly()
    if not compiled:
        return
    # Batches vary (a run's last group of photos; a photo's crops for ``crop``):
    # ``compile_modules`` compiles a second size once, for any size.
    if isinstance(generator, SamMaskGenerator):
        compile_encoder(generator.model.image_encoder)
        if not isinstance(generator.decoder, CompiledDecoder):  # (a GPU's default already)
            generator.decoder = decoder_for(generator.model, compiled=True)
        generator.scoring.compile()  # at every size from the first photo (a GPU's default): 12 MP ~14x
    for model in models:
        compile_modules(model.use.encoder if hasattr(model, "use") else model.model.visual)
