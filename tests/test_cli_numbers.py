"""Number options on the command line: nan, infinity and values out of range refused in
one line before anything is made (click's range lets nan through)."""

import pytest
from typer.testing import CliRunner

from usesearch.cli.app import app


@pytest.mark.parametrize(
    "option, value, why",
    [
        ("--recall-target", "nan", "'nan': give a number from 0 to 1"),
        ("--recall-target", "1.5", "'1.5': give a number from 0 to 1"),
        ("--recall-target", "-0.1", "'-0.1': give a number from 0 to 1"),
        ("--latency-budget", "nan", "'nan': give a number from 0 to 60000"),
        ("--latency-budget", "inf", "'inf': give a number from 0 to 60000"),
        ("--latency-budget", "60001", "'60001': give a number from 0 to 60000"),
        ("--latency-budget", "fast", "'fast': give a number from 0 to 60000"),
    ],
)
def test_a_number_option_refuses_nan_infinity_and_its_range_in_one_line(option, value, why, tmp_path):
    """Click's range lets nan through; a calibration asked for a nan target or budget
    would compare nothing and choose at random."""
    result = CliRunner().invoke(app, ["calibrate", "--db", str(tmp_path / "none"), option, value])
    assert result.exit_code == 2 and why in result.output, result.output
    assert not (tmp_path / "none").exists()
    from usesearch.cli.options import number_from

    assert number_from(0.0, 1.0)("0.5") == 0.5 and number_from(0.0, 1.0)("1") == 1.0


@pytest.mark.parametrize(
    "command, option, value, why",
    [
        ("index", "--stability-score-thresh", "nan", "'nan': give a number up to 1"),
        ("index", "--pred-iou-thresh", "2", "'2': give a number up to 1"),
        ("index", "--box-nms-thresh", "-1", "'-1': give a number from 0 to 1"),
        ("index", "--points-per-side", "100000", "less than or equal to 512"),
        ("index", "--crop-n-layers", "10", "less than or equal to 5"),
        ("segment", "--stability-score-thresh", "inf", "'inf': give a number up to 1"),
        ("curate", "--pred-iou-thresh", "3", "'3': give a number up to 1"),
    ],
)
def test_sams_settings_refuse_nan_and_values_no_photo_could_use(command, option, value, why, tmp_path):
    """A NaN threshold was recorded with the index, and since NaN never equals itself no
    later run, the same command included, could resume it; a threshold above 1 kept no
    mask of any photo, recorded as done (below 0 keeps every mask: random weights' way,
    taken); a huge grid or crop depth failed every photo. Each is refused in one line
    before anything is made."""
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"")
    args = {
        "index": ["index", str(photo), "--db", str(tmp_path / "db"), "--masker", "sam"],
        "segment": ["segment", str(photo), "--classes", "cat", "--out", str(tmp_path / "l.png"), "--masker", "sam"],
        "curate": ["curate", "run", str(tmp_path), "--input-format", "folder", "--dataset-dir", str(tmp_path / "db")],
    }[command]
    result = CliRunner().invoke(app, [*args, option, value] + (["--preset", "tiny"] if command != "curate" else []))
    said = " ".join(result.output.replace("│", " ").split())  # Rich's error box wraps the line
    assert result.exit_code == 2 and why in said, result.output
    assert not (tmp_path / "db").exists() and not (tmp_path / "l.png").exists()


@pytest.mark.parametrize("value", ["-5", "65536"])
def test_an_ignored_label_value_no_label_png_holds_is_refused(value, tmp_path):
    """`--ignore-index -5` was taken, and named in a later error as the ignored value."""
    args = ["eval", "semseg", "--images", str(tmp_path), "--labels", str(tmp_path), "--classes", "a,b"]
    result = CliRunner().invoke(app, [*args, "--ignore-index", value, "--preset", "tiny"])
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "'--ignore-index'" in said, said


@pytest.mark.parametrize(
    "value, why",
    [
        ("-1", "-1: give 0 (one shard) or a number of segments a shard"),
        ("9223372036854775808", "9223372036854775808: give 0 (one shard) or a number of segments a shard"),
        ("5", "5 segments a shard: give 0 (one shard) or at least 1,000"),
    ],
)
def test_a_shard_size_out_of_range_is_refused_and_its_help_shows_no_int64_bound(value, why, tmp_path):
    """`--shard-size` had click's range [0<=x<=9223372036854775807] in its help."""
    result = CliRunner().invoke(app, ["reindex", "--db", str(tmp_path / "none"), f"--shard-size={value}"])
    said = " ".join(result.output.replace("\u2502", " ").split())
    assert result.exit_code == 2 and why in said, said
    helped = CliRunner().invoke(app, ["index", "--help"])
    assert helped.exit_code == 0 and "--shard-size" in helped.output and "9223372036854775807" not in helped.output
