"""What a command compiles goes by its photos (``usesearch.devices.compiles``): a GPU
run of many photos compiles every model, one of few compiles nothing, those between SAM's
decoder and scoring; ``segment`` and ``eval`` follow the same rule. CUDA is reported by
monkeypatching torch and the compiles are spied on, not done."""

from typer.testing import CliRunner

from tests.helpers import parsed, write_photos
from tests.test_devices import fake_cuda, spy_loaders
from usesearch.cli.app import app
from usesearch.devices import COMPILE_FROM_PHOTOS, EAGER_BELOW_PHOTOS, compile_note, compiles
from usesearch.indexer import IndexOptions, index_paths


def spy_compiles(monkeypatch) -> list[str]:
    """CUDA reported (``fake_cuda``), the models built on the CPU (``spy_loaders``), and
    what each command compiles recorded, not done: SAM's parts and the "towers" where it
    compiles every model, "nothing" where it turns SAM's GPU defaults off."""
    import usesearch.models.compiling as compiling
    from usesearch.masks.amg import SamMaskGenerator
    from usesearch.masks.candidate_scoring import CandidateScoring

    fake_cuda(monkeypatch)
    spy_loaders(monkeypatch, [])
    done: list[str] = []

    def decoder_for(sam, compiled):  # (inductor's cold compiles on 2 cores took the suite ~100 s)
        done.append("SAM decoder")
        return sam.mask_decoder

    monkeypatch.setattr(compiling, "compile_encoder", lambda encoder: done.append("SAM encoder"))
    monkeypatch.setattr(compiling, "decoder_for", decoder_for)
    monkeypatch.setattr(CandidateScoring, "compile", lambda self, any_size=True: done.append("scoring"))
    monkeypatch.setattr(compiling, "compile_modules", lambda module: done.append("towers"))
    monkeypatch.setattr(SamMaskGenerator, "run_eagerly", lambda self: done.append("nothing"))
    return done


def test_what_a_gpu_run_compiles_goes_by_its_photo_count_unless_told(monkeypatch, tmp_path):
    """``--compile`` unset: a GPU run of COMPILE_FROM_PHOTOS photos or more compiles SAM's
    encoder, decoder, scoring and the towers; one under EAGER_BELOW_PHOTOS nothing (SAM's
    generator's GPU defaults turned off); between, the generator's defaults. A CPU run
    keeps the defaults; ``--no-compile`` compiles nothing. (The compiles are spied on.)"""
    import usesearch.devices

    assert compiles(None, "cuda", COMPILE_FROM_PHOTOS) is True and compiles(None, "cuda", 10**7) is True
    assert compiles(None, "cuda", COMPILE_FROM_PHOTOS - 1) is None is compiles(None, "cuda", EAGER_BELOW_PHOTOS)
    assert compiles(None, "cuda", EAGER_BELOW_PHOTOS - 1) is False is compiles(None, "cuda", 1)
    assert compiles(None, "cpu", 10**7) is None is compiles(None, "cpu", 1)
    assert compiles(True, "cpu", 1) is True and compiles(False, "cuda", 10**7) is False
    assert compile_note(None, None, "cpu", 10**7) is None is compile_note(False, False, "cpu", 1)
    assert "5,000" in str(compile_note(None, True, "cuda", 5000)) and "--no-compile" in str(
        compile_note(None, True, "cuda", 5000)
    )
    assert str(compile_note(None, None, "cuda", 500)).startswith("SAM's decoder and candidate scoring compiled")
    photos = write_photos(tmp_path / "photos", ("astronaut", "chelsea"))
    compiled = spy_compiles(monkeypatch)
    sam = {"points_per_side": 4, "pred_iou_thresh": -10.0, "stability_score_thresh": -10.0}
    runs = {}
    # (these two photos stand for: a short run, a mid-sized one, an archive; then --no-compile's)
    for name, option, eager_below, compile_from in (
        ("short", None, 3, 4),
        ("mid", None, 2, 3),
        ("archive", None, 1, 2),
        ("no", False, 1, 2),
    ):
        monkeypatch.setattr(usesearch.devices, "EAGER_BELOW_PHOTOS", eager_below)
        monkeypatch.setattr(usesearch.devices, "COMPILE_FROM_PHOTOS", compile_from)
        options = IndexOptions(preset="tiny", masker="sam", masker_options=sam, compile=option)
        report = index_paths([photos], tmp_path / name, options)
        runs[name] = (report.devices[2], list(compiled))
        assert report.done == 2
        compiled.clear()
    assert runs["short"] == (
        "models not compiled: 2 photos to index, under the 3 a GPU run compiles SAM's decoder from "
        "(--compile to compile anyway)",
        ["nothing"],
    )
    assert runs["mid"][0].startswith("SAM's decoder and candidate scoring compiled, the other models not: 2 photos to")
    assert runs["mid"][1] == []
    assert runs["archive"][0].startswith("models compiled (torch.compile) for this GPU run's 2 photos to index")
    assert runs["archive"][1] == ["SAM encoder", "SAM decoder", "scoring", "towers"]
    assert runs["no"] == ("models compiled (torch.compile): no, as asked", ["nothing"])
    # A rerun over the archive's photos, none new: a short run's choice, not the archive's.
    again = index_paths([photos], tmp_path / "archive", IndexOptions(preset="tiny", masker="sam", masker_options=sam))
    assert again.done == 0 and again.skipped == 2 and compiled == ["nothing"]
    assert again.devices[2].startswith("models not compiled: 0 photos to index")
    assert parsed(["index", "p", "--db", "d"])[1]["compile_models"] is None
    assert parsed(["index", "p", "--db", "d", "--no-compile"])[1]["compile_models"] is False
    assert parsed(["index", "p", "--db", "d", "--compile"])[1]["compile_models"] is True


def test_segment_and_eval_compile_by_the_same_rule(monkeypatch, tmp_path):
    """SAM's generator compiles its decoder and scoring on a GPU by default (~23 s of
    compiling on an H100); ``segment`` has one photo, so it runs them eagerly. With the
    threshold at one photo, it stands for ``eval`` of a dataset of COMPILE_FROM_PHOTOS
    photos or more (the same ``Segmenter.build``): every model compiled."""
    import usesearch.devices

    done = spy_compiles(monkeypatch)
    photo = write_photos(tmp_path / "p", ("coffee",)) / "coffee.png"
    flags = ["--preset", "tiny", "--masker", "sam", "--classes", "cup,table", "--device", "cuda"]
    for out, compile_from, expected in (
        ("one.png", 1000, ["nothing"]),
        ("all.png", 1, ["SAM encoder", "SAM decoder", "scoring", "towers"]),
    ):
        monkeypatch.setattr(usesearch.devices, "COMPILE_FROM_PHOTOS", compile_from)
        result = CliRunner().invoke(app, ["segment", str(photo), "--out", str(tmp_path / out), *flags])
        assert result.exit_code == 0, result.output
        assert done == expected and (tmp_path / out).is_file()
        done.clear()
