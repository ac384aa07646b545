"""One meaning of --device (where every model runs; CUDA when torch sees it) and FAISS
on a device of its own (the GPU only where the installed faiss has GPU support).
CUDA is reported as available by monkeypatching torch: every loader is then asked
for CUDA, while the models are really built on the CPU so the run completes (what a
GPU run compiles: test_devices_compile.py)."""

from pathlib import Path

import faiss
import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import OPTS, parsed, write_photos
from usesearch.cli.app import app
from usesearch.devices import resolve_device
from usesearch.errors import UsesearchError
from usesearch.indexer import IndexOptions, SegmentIndex, faiss_gpu, index_paths
from usesearch.indexer.ray_cluster import actor_device


def fake_cuda(monkeypatch, gpus: int = 1) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


def spy_loaders(monkeypatch, asked: list) -> None:
    """Record the device each model loader is asked for; build the model on the CPU."""
    import usesearch.indexer.pipeline
    import usesearch.masks.sam
    import usesearch.models.factory

    for module, name in (
        (usesearch.indexer.pipeline, "load_model"),
        (usesearch.models.factory, "load_model"),  # a query's, imported where it loads
        (usesearch.masks.sam, "load_sam"),
    ):
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            if "device" in kwargs:
                asked.append((_name, torch.device(kwargs["device"])))
                kwargs["device"] = "cpu"
            else:  # load_sam(cfg, preset, checkpoint, device)
                asked.append((_name, torch.device(args[3])))
                args = (*args[:3], "cpu")
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)


def test_the_default_device_is_cuda_when_torch_sees_it_else_the_cpu(monkeypatch):
    assert resolve_device(None) == torch.device("cpu") == resolve_device("auto")
    fake_cuda(monkeypatch, gpus=2)
    assert resolve_device(None) == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UsesearchError, match="2 CUDA GPU"):
        resolve_device("cuda:2")
    from usesearch.devices import explicit_device  # an index's: the default waits for its first model

    assert explicit_device(None) is None is explicit_device("auto") and explicit_device("cuda:1") == torch.device(
        "cuda:1"
    )
    with pytest.raises(UsesearchError, match="2 CUDA GPU"):
        explicit_device("cuda:2")
    for wrong in ("tpu", "mps", "gpu!"):
        with pytest.raises(UsesearchError, match="--device"):
            resolve_device(wrong)


def test_every_model_an_index_run_loads_is_asked_for_cuda_and_faiss_stays_on_the_cpu(monkeypatch, tmp_path):
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea"))
    fake_cuda(monkeypatch)
    asked: list = []
    spy_loaders(monkeypatch, asked)
    options = IndexOptions(
        preset="tiny",
        masker="sam",
        masker_options={"points_per_side": 4, "pred_iou_thresh": -10.0, "stability_score_thresh": -10.0},
    )
    report = index_paths([photos], tmp_path / "db", options)
    assert {name for name, _ in asked} == {"load_model", "load_sam"}
    assert all(device == torch.device("cuda") for _, device in asked), asked
    assert report.done == 2 and report.segments > 0
    assert report.devices[0].startswith("models on cuda:0 (Fake GPU, bfloat16)")
    if not hasattr(faiss, "StandardGpuResources"):  # faiss-cpu, as the README installs it
        assert "FAISS on the CPU" in report.devices[1] and "no GPU support" in report.devices[1]
    assert report.devices[2].startswith("models not compiled: 2 photos to index, under the 100")  # a short GPU run
    stats = SegmentIndex.open(tmp_path / "db", device="cpu").stats()
    assert stats["vectors"] == report.segments and stats["faiss_device"] == faiss_gpu.resolve(None)
    assert stats["faiss_note"] == faiss_gpu.note(None)


def test_a_run_on_one_of_several_gpus_says_so_and_how_to_use_them_all(monkeypatch):
    from usesearch.indexer.pipeline import check_devices

    fake_cuda(monkeypatch, gpus=1)
    assert not any("GPUs" in line for line in check_devices(IndexOptions(preset="tiny")))
    assert not any("GPUs" in line for line in check_devices(IndexOptions(preset="tiny", device="cpu")))
    fake_cuda(monkeypatch, gpus=4)
    for device in (None, "cuda:1"):
        lines = check_devices(IndexOptions(preset="tiny", device=device))
        assert lines[-1].startswith("1 of this machine's 4 GPUs in use: --ray runs a model actor on each"), lines
    assert not any("GPUs" in line for line in check_devices(IndexOptions(preset="tiny", device="cpu")))


def test_a_query_loads_its_models_and_the_region_sam_on_the_default_device(monkeypatch, tmp_path, photo):
    photos = write_photos(tmp_path / "photos", ("coffee",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, device="cpu"))
    fake_cuda(monkeypatch)
    asked: list = []
    spy_loaders(monkeypatch, asked)
    index = SegmentIndex.open(tmp_path / "db")
    assert index.query("a cat", k=1)
    index.region(photo, point=(20, 20))
    assert [name for name, _ in asked] == ["load_model", "load_sam"]
    assert all(device == torch.device("cuda") for _, device in asked), asked


def test_a_text_querys_text_side_loads_on_the_default_device(monkeypatch, tmp_path, trained_head):
    import usesearch.models.factory

    photos = write_photos(tmp_path / "photos", ("coffee",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, device="cpu", head=str(trained_head[0])))
    fake_cuda(monkeypatch)
    asked: list = []
    real = usesearch.models.factory.load_text_model

    def spy(*args, **kwargs):
        asked.append(torch.device(kwargs["device"]))
        return real(*args, **{**kwargs, "device": "cpu"})

    monkeypatch.setattr(usesearch.models.factory, "load_text_model", spy)
    with SegmentIndex.open(tmp_path / "db") as index:
        assert index.query("a cat", k=1) and index.models.loaded == {"text"}
    assert asked == [torch.device("cuda")]


@pytest.mark.skipif(faiss_gpu.available(), reason="this faiss has a GPU: --faiss-device cuda is possible here")
def test_impossible_devices_are_refused_in_one_line_before_any_model_loads(monkeypatch, tmp_path):
    photos = write_photos(tmp_path / "photos", ("coffee",))
    import usesearch.indexer.pipeline

    monkeypatch.setattr(usesearch.indexer.pipeline, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    runner = CliRunner()
    cases = [
        (
            ["index", str(photos), "--db", str(tmp_path / "a"), "--preset", "tiny", "--faiss-device", "cuda"],
            "has no GPU support",
        ),
    ]
    if not torch.cuda.is_available():
        cases.append(
            (
                ["index", str(photos), "--db", str(tmp_path / "c"), "--preset", "tiny", "--device", "cuda"],
                "torch sees no CUDA GPU",
            )
        )
    for args, reason in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert reason in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert not Path(args[3]).exists(), "a refused run must leave no index folder behind"
    for flag in ("--faiss-device", "--device"):  # a misspelling: refused as the command line is read
        args = ["index", str(photos), "--db", str(tmp_path / "b"), "--preset", "tiny", flag, "tpu"]
        result = runner.invoke(app, args)
        said = " ".join(result.output.replace("\u2502", " ").split())  # (click's error box, joined)
        assert result.exit_code == 2 and f"Invalid value for '{flag}':" in said and "cuda:N" in said, said
        assert "not 'tpu'" in said and not (tmp_path / "b").exists()
    for gpu in (False, True):  # the models' GPU is named only where torch sees one
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        with pytest.raises(UsesearchError) as refused:
            faiss_gpu.resolve("cuda")
        assert ("the models still use the GPU" in str(refused.value)) == gpu, refused.value


@pytest.mark.skipif(faiss_gpu.available(), reason="this faiss has a GPU")
def test_search_commands_refuse_faiss_on_a_gpu_without_gpu_faiss_and_work_by_default(tmp_path):
    photos = write_photos(tmp_path / "photos", ("coffee",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, device="cpu"))
    runner = CliRunner()
    for args in (
        ["query", "a cat", "--db", str(tmp_path / "db"), "--faiss-device", "cuda"],
        ["info", "--db", str(tmp_path / "db"), "--faiss-device", "cuda"],
        ["reindex", "--db", str(tmp_path / "db"), "--faiss-device", "cuda"],
        ["calibrate", "--db", str(tmp_path / "db"), "--faiss-device", "cuda"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "--faiss-device cuda" in result.output, (args, result.output)
    result = runner.invoke(app, ["info", "--db", str(tmp_path / "db")])
    assert result.exit_code == 0 and "FAISS on the CPU" in result.output, result.output
    result = runner.invoke(app, ["query", "a cat", "--db", str(tmp_path / "db"), "-k", "1", "--json"])
    assert result.exit_code == 0, result.output


def test_calibrate_times_faiss_where_a_search_there_runs(tmp_path, monkeypatch):
    """`calibrate` loaded the index on the CPU whatever FAISS's device: an index served
    from a GPU was timed (and its search effort chosen) on the CPU."""
    from tests.test_index_scale import synthetic_index
    from usesearch.indexer import maintenance, reindex, vector_files

    synthetic_index(tmp_path / "db", n=1200, dim=32, images=20)
    reindex(tmp_path / "db", "IVF8,Flat", text_queries=False)
    asked: list[str] = []

    def load(*args):
        asked.append(args[4])
        raise KeyboardInterrupt  # (stops here: a GPU index cannot be made on this machine)

    monkeypatch.setattr(vector_files, "load", load)
    for option, gpu_faiss, device in ((None, True, "cuda"), (None, False, "cpu"), ("cpu", True, "cpu")):
        monkeypatch.setattr(faiss_gpu, "available", lambda gpu_faiss=gpu_faiss: gpu_faiss)
        with pytest.raises(KeyboardInterrupt):
            maintenance.recalibrate(tmp_path / "db", text_queries=False, faiss_device=option)
        assert asked.pop() == device, (option, gpu_faiss)


def test_reindex_device_is_now_faiss_device(capsys):
    old, new = ["reindex", "--db", "d", "--device", "cpu"], ["reindex", "--db", "d", "--faiss-device", "cpu"]
    assert parsed(old) == parsed(new)
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 1 and "faiss-device" in notes[0]
    assert parsed(["index", "p", "--db", "d", "--device", "cpu"])[1]["device"] == "cpu"
    assert capsys.readouterr().err == ""


def test_ray_actors_follow_the_same_rule():
    assert actor_device(None, gpus=0) == "cpu" and actor_device(None, gpus=2) == "cuda"
    assert actor_device("cpu", gpus=2) == "cpu" and actor_device("cuda", gpus=1) == "cuda"
    with pytest.raises(UsesearchError, match="no GPU"):
        actor_device("cuda", gpus=0)
    with pytest.raises(UsesearchError, match="GPU of its own"):
        actor_device("cuda:1", gpus=2)
    # More workers than GPUs: said in the run's summary (Ray leaves the rest pending).
    from usesearch.indexer.ray_cluster import actors_summary

    assert actors_summary("cuda", 2, "auto", workers=8).endswith(
        "--workers 8: 6 wait for a GPU the cluster does not have now)"
    )
    assert "wait" not in actors_summary("cuda", 2, "auto", workers=2) + actors_summary("cpu", 0, "auto", workers=8)


def test_faiss_device_resolution():
    assert faiss_gpu.resolve("cpu") == "cpu" and faiss_gpu.resolve(None) == ("cuda" if faiss_gpu.available() else "cpu")
    assert faiss_gpu.note("cpu").startswith("FAISS on the CPU (--faiss-device cpu")
    with pytest.raises(UsesearchError, match="choose one of"):
        faiss_gpu.resolve("gpu")


@pytest.mark.skipif(faiss_gpu.available(), reason="this faiss has a GPU")
def test_the_faiss_gpu_install_hint_is_given_only_where_there_is_a_gpu(monkeypatch):
    """Every run on a machine with no GPU ended with "pip uninstall -y faiss-cpu && pip
    install faiss-gpu-cu12": noise there, and a wrong step."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert faiss_gpu.note(None) == f"FAISS on the CPU (faiss {faiss.__version__}; no GPU here)"
    if not hasattr(faiss, "StandardGpuResources"):  # faiss-cpu, as the README installs it
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert "pip install faiss-gpu" in faiss_gpu.note(None)


@pytest.mark.parametrize("command", ["embed", "segment", "query", "similar-region"])
def test_every_command_that_loads_models_asks_for_the_default_device(command, monkeypatch, tmp_path, photo):
    """With CUDA reported as available, each loader a command reaches is asked for a
    device that resolves to CUDA (never a hard-coded CPU); the models are really built
    on the CPU so the command completes."""
    from PIL import Image

    import usesearch.indexer.search
    import usesearch.masks.registry
    import usesearch.masks.sam
    import usesearch.models.factory
    from usesearch.devices import resolve_device as resolve

    image = tmp_path / "photo.png"
    Image.fromarray(photo).save(image)
    photos = write_photos(tmp_path / "photos", ("coffee",))
    index_paths([photos], tmp_path / "db", IndexOptions(**OPTS, device="cpu"))
    fake_cuda(monkeypatch)
    asked: list = []
    for module, name, at in (
        (usesearch.models.factory, "load_model", "device"),
        (usesearch.masks.registry, "build_masker", 2),
        (usesearch.masks.sam, "load_sam", 3),
    ):
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, _at=at, **kwargs):
            if isinstance(_at, str) or len(args) <= _at:
                key = _at if isinstance(_at, str) else "device"
                asked.append((_name, resolve(kwargs.get(key))))
                kwargs[key] = "cpu"
            else:
                asked.append((_name, resolve(args[_at])))
                args = (*args[:_at], "cpu", *args[_at + 1 :])
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    db = str(tmp_path / "db")
    args = {
        "embed": ["embed", str(image), "a cat", "--preset", "tiny"],
        "segment": [
            "segment",
            str(image),
            "--classes",
            "sky,face",
            "--out",
            str(tmp_path / "labels.png"),
            "--preset",
            "tiny",
        ],
        "query": ["query", "a cat", "--db", db, "-k", "1"],
        "similar-region": ["similar", "--db", db, "--image", str(image), "--point", "20,20", "-k", "1"],
    }[command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert asked and all(device == torch.device("cuda") for _, device in asked), asked


def test_the_text_tower_goes_to_the_models_device_with_the_image_towers():
    """USE moved only CLIP's image tower: on a GPU, text tokens met a text tower left on
    the CPU and every text query failed. ``meta`` stands in for CUDA (no GPU here)."""
    from usesearch.models.factory import create_use_and_clip
    from usesearch.models.model import USEEmbedder

    use, clip = create_use_and_clip("tiny")
    embedder = USEEmbedder(use, clip, torch.device("meta"), "digest")
    devices = {p.device.type for p in embedder.text.model.parameters()} | {p.device.type for p in use.parameters()}
    assert devices == {"meta"}


def test_a_gpu_that_only_emulates_bf16_runs_float32(monkeypatch):
    """T4 and V100 emulate bfloat16, slower than float32: torch's default answer counts them."""
    from usesearch.devices import bf16_autocast, has_bf16

    fake_cuda(monkeypatch, gpus=2)
    capability = {0: (7, 5), 1: (8, 0)}  # a T4 beside an A100: each GPU answers for itself
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[torch.device(device).index])
    assert not has_bf16(torch.device("cuda:0")) and not bf16_autocast(torch.device("cuda:0"))._enabled
    assert has_bf16(torch.device("cuda:1"))
    # a CPU's answer is its own (AMX or AVX512-BF16), but autocast's default there stays off
    import usesearch.devices

    monkeypatch.setattr(usesearch.devices, "cpu_has_bf16", lambda: True)
    assert has_bf16(torch.device("cpu")) and not bf16_autocast(torch.device("cpu"))._enabled


def test_a_run_that_computes_nothing_says_no_device(tmp_path):
    """A rerun with every photo already indexed loads no model: "models on the CPU"
    under it said where models ran that never loaded."""
    photos = write_photos(tmp_path / "photos", ("coffee",))
    args = ["index", str(photos), "--db", str(tmp_path / "db"), "--preset", "tiny", "--masker", "felzenszwalb"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0 and "models on the CPU" in first.output and "FAISS on the" in first.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "1 skipped" in again.output, again.output
    assert "models on the" not in again.output and "FAISS on the" not in again.output


@pytest.mark.parametrize(
    "spelt, fault",
    [
        (None, None),
        ("auto", None),
        ("cpu", None),
        ("cuda", None),
        ("cuda:3", None),
        ("mps", "usesearch runs its models on cpu, cuda or cuda:N, not 'mps'"),
        ("cuda:x", "'cuda:x' is not a device; give cpu, cuda or cuda:N"),
        ("CUDA", "'CUDA' is not a device; give cpu, cuda or cuda:N"),
        ("cuda:\u00b2", "'cuda:\u00b2' is not a device; give cpu, cuda or cuda:N"),  # (a superscript 2 is a digit)
    ],
)
def test_a_devices_spelling_is_checked_without_torch_as_torch_reads_it(spelt, fault):
    from usesearch.devices import device_fault

    assert device_fault(spelt) == fault
    if fault is None and spelt not in (None, "auto"):
        assert torch.device(spelt).type in ("cpu", "cuda")  # what torch takes, as the check does
    elif fault is not None and "not a device" in fault:
        with pytest.raises((RuntimeError, TypeError)):
            torch.device(spelt)
