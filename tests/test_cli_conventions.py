"""One spelling per concept across commands; old spellings still work for one
release, with a deprecation message."""

import subprocess
import sys

from usesearch.cli.compat import modernise


def test_old_spellings_are_rewritten_with_a_message(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("sky\ntree\n")
    cases = [
        (
            ["audit", "--coco", "a.json", "--images", "i", "--top", "5"],
            ["eval", "audit", "--coco", "a.json", "--images", "i", "-k", "5"],
        ),
        (
            ["embed", "p.jpg", "-t", "a cat", "--text", "a dog", "--top", "2"],
            ["embed", "p.jpg", "-k", "2", "a cat", "a dog"],
        ),
        (["demo", "--query", "a cup"], ["demo", "a cup"]),
        (
            ["eval", "parts", "--coco-json", "p.json", "--json", "r.json"],
            ["eval", "parts", "--coco", "p.json", "--out", "r.json"],
        ),
        (["eval", "semseg", "--classes", str(classes)], ["eval", "semseg", "--classes-file", str(classes)]),
        (
            ["index", "photos", "--db", "d", "--masker", "coco", "--masks", "m.json"],
            ["index", "photos", "--db", "d", "--masker", "coco", "--coco", "m.json"],
        ),
    ]
    for old, new in cases:
        got, notes = modernise(old)
        assert got == new and notes, old
    for current in (
        ["eval", "semseg", "--classes", "sky,tree", "--json"],
        ["query", "a cat", "--db", "d", "-k", "3", "--json"],
    ):
        assert modernise(current) == (current, [])


def test_the_installed_entry_point_accepts_an_old_spelling(tmp_path):
    from PIL import Image
    from skimage import data

    image = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()[::8, ::8]).save(image)
    done = subprocess.run(
        [sys.executable, "-m", "usesearch", "embed", str(image), "-t", "a cat", "--preset", "tiny", "-k", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deprecated: `embed -t TEXT` is now `embed IMAGE TEXT...`" in done.stderr and "a cat" in done.stdout
