"""--precision: what SAM and the image towers compute in. ``auto`` keeps today's rule
(bfloat16 on a GPU that has it, float32 on a CPU); ``bfloat16`` also runs on a CPU with
bfloat16 instructions (AMX, AVX512-BF16), and is refused in one line, before any model
loads, where the device would only emulate it. ``cpu_has_bf16`` is monkeypatched both
ways, so the tests mean the same on any CI machine."""

import types
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import usesearch.devices as devices
from tests.helpers import write_photos
from usesearch.cli.app import app
from usesearch.errors import UsesearchError
from usesearch.indexer import IndexOptions, index_paths
from usesearch.indexer.ray_cluster import check_actor_precision


def cpu_bf16(monkeypatch, has: bool) -> None:
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: has)


def test_auto_is_bfloat16_on_a_gpu_that_has_it_and_float32_on_any_cpu(monkeypatch):
    cpu = torch.device("cpu")
    cpu_bf16(monkeypatch, True)
    assert devices.has_bf16(cpu) and not devices.uses_bf16(cpu) and not devices.uses_bf16(cpu, "auto")
    assert devices.uses_bf16(cpu, "bfloat16") and not devices.uses_bf16(cpu, "float32")
    assert devices.describe(cpu, "bfloat16") == "models on the CPU (bfloat16)" and devices.describe(cpu) == (
        "models on the CPU"
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    gpu = torch.device("cuda:0")
    assert devices.uses_bf16(gpu) and devices.uses_bf16(gpu, "bfloat16") and not devices.uses_bf16(gpu, "float32")
    assert not devices.bf16_autocast(gpu, "float32")._enabled and devices.bf16_autocast(cpu, "bfloat16")._enabled


def test_bfloat16_where_it_would_be_emulated_and_a_misspelling_are_refused_in_one_line(monkeypatch):
    cpu_bf16(monkeypatch, False)
    with pytest.raises(UsesearchError, match="neither AMX nor AVX512-BF16") as refused:
        devices.uses_bf16(torch.device("cpu"), "bfloat16")
    assert "\n" not in str(refused.value)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4
    with pytest.raises(UsesearchError, match="older than Ampere"):
        devices.uses_bf16(torch.device("cuda:0"), "bfloat16")
    for wrong in ("bf16", "fp32", ""):
        with pytest.raises(UsesearchError, match="give auto, float32, bfloat16"):
            IndexOptions(precision=wrong)
    # Ray: against this machine where the actors run here; on a cluster, the spelling alone
    with pytest.raises(UsesearchError, match="neither AMX"):
        check_actor_precision("cpu", "bfloat16", None)
    check_actor_precision("cpu", "bfloat16", "10.0.0.1:6379")  # (each actor checks its own device)
    with pytest.raises(UsesearchError, match="give auto"):
        check_actor_precision(None, "half", "10.0.0.1:6379")


def test_every_command_taking_it_refuses_an_emulated_bfloat16_before_any_model_loads(monkeypatch, tmp_path):
    import usesearch.indexer.pipeline
    import usesearch.models.factory
    from usesearch.training import train
    from usesearch.training.synthetic import write_dataset

    photos = write_photos(tmp_path / "photos", ("coffee",))
    data = write_dataset(tmp_path / "data", 2, seed=1)
    cpu_bf16(monkeypatch, False)
    monkeypatch.setattr(usesearch.indexer.pipeline, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    for module, builder in (
        (usesearch.models.factory, "build_clip"),
        (usesearch.models.factory, "create_use_and_clip"),
    ):
        monkeypatch.setattr(module, builder, lambda *a, **k: pytest.fail("a model was built"))
    monkeypatch.setattr(train, "create_use_and_clip", lambda *a, **k: pytest.fail("a model was built"))
    runner = CliRunner()
    db = tmp_path / "db"
    for args in (
        ["index", str(photos), "--db", str(db), "--preset", "tiny", "--device", "cpu", "--precision", "bfloat16"],
        ["segment", str(photos / "coffee.png"), "--out", str(tmp_path / "labels.png"), "--classes", "cup,table"]
        + ["--preset", "tiny", "--device", "cpu", "--precision", "bfloat16"],
        [
            "embed",
            str(photos / "coffee.png"),
            "a cup",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--precision",
            "bfloat16",
        ],
        ["train", str(data), "--run-dir", str(tmp_path / "run"), "--preset", "tiny", "--device", "cpu"]
        + ["--precision", "bfloat16"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "neither AMX nor AVX512-BF16" in result.output and len(result.output.strip().splitlines()) == 1
    assert not Path(db).exists(), "a refused run must leave no index folder behind"


def _autocast_seen(monkeypatch) -> dict[str, list[bool]]:
    """Whether CPU autocast was on as SAM's image encoder and the backbones ran, each
    call, on the models an index run loads."""
    import usesearch.indexer.pipeline as pipeline

    seen: dict[str, list[bool]] = {"sam": [], "backbones": []}
    real = pipeline.load_models

    def spied(options):
        model, masker = real(options)
        for name, module in (("sam", masker.generator.model.image_encoder), ("backbones", model.use.encoder)):
            module.register_forward_pre_hook(lambda *_, name=name: seen[name].append(torch.is_autocast_enabled("cpu")))
        return model, masker

    monkeypatch.setattr(pipeline, "load_models", spied)
    return seen


@pytest.mark.parametrize("precision", ["auto", "float32", "bfloat16"])
def test_an_index_run_computes_sam_and_the_backbones_in_the_precision_asked(monkeypatch, tmp_path, precision):
    cpu_bf16(monkeypatch, True)
    seen = _autocast_seen(monkeypatch)
    photos = write_photos(tmp_path / "photos", ("astronaut", "coffee"))
    options = IndexOptions(
        preset="tiny",
        masker="sam",
        masker_options={"points_per_side": 4, "pred_iou_thresh": -10.0, "stability_score_thresh": -10.0},
        device="cpu",
        precision=precision,
    )
    report = index_paths([photos], tmp_path / "db", options)
    assert report.done == 2 and report.failed == 0 and report.segments > 0
    on = precision == "bfloat16"
    assert seen["sam"] == [on, on] and seen["backbones"] == [on, on], seen
    assert report.devices[0] == "models on the CPU" + (" (bfloat16)" if on else "")


def test_sams_encoder_compiled_under_cpu_bfloat16_gives_its_eager_features():
    """``--compile --precision bfloat16`` on a CPU. segment-anything hands its blocks the
    patch embedding's channels-first tokens as a permuted view, and inductor's code for
    a block's residual add + layer norm over them and the attention's bfloat16 output
    gave NaN (torch 2.14: 64 channels and more, a global block after a windowed one):
    every mask of a photo came out empty, so each photo was indexed with no segment.
    ``compile_encoder`` hands the blocks row-major tokens. (Seen on this project's AMX
    CPUs; inductor's code differs by instruction set, so a CPU without AVX512 may pass
    this even without the fix.)"""
    from functools import partial

    from segment_anything.modeling.image_encoder import ImageEncoderViT

    from usesearch.masks.sam_compile import compile_encoder
    from usesearch.masks.sam_fast import use_sdpa

    torch.manual_seed(0)
    encoder = ImageEncoderViT(
        img_size=128, patch_size=8, embed_dim=64, depth=2, num_heads=2, out_chans=8, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=4, global_attn_indexes=(1,),
    ).eval()  # fmt: skip
    use_sdpa(types.SimpleNamespace(image_encoder=encoder))  # type: ignore[arg-type]  (as load_sam routes SAM)
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = encoder(pixels).float()
        compile_encoder(encoder)
        got = encoder(pixels).float()
    assert all(getattr(block, "_compiled_call_impl", None) is not None for block in encoder.blocks)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.05)  # bfloat16's rounding, fused otherwise
