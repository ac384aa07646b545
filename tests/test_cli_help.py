"""Help texts say what the options take."""

from usesearch.cli.app import app


def test_a_head_option_says_several_only_where_it_takes_several():
    """`eval audit --help` said segment and eval take several heads, and refused a second."""
    import typer.main

    seen = []

    def walk(command, path):
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])
        for param in command.params:
            if "--head" in getattr(param, "opts", []):
                seen.append((" ".join(path), param.multiple, "several" in (param.help or "")))

    walk(typer.main.get_command(app), [])
    assert len(seen) >= 5 and {multiple for _, multiple, _ in seen} == {True, False}, seen
    assert all(multiple == says for _, multiple, says in seen), seen


def option_help(path: list[str], flag: str) -> str:
    import typer.main

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return next(p.help for p in command.params if flag in getattr(p, "opts", []))


def test_eval_audits_report_dir_names_each_file_it_writes():
    """It left out problems.json, which every run writes."""
    from usesearch.io.own_folders import AUDIT_FILES, AUDIT_LISTS, AUDIT_MARK

    written = {name for name in AUDIT_FILES if name != AUDIT_MARK and name.split(".")[0] not in AUDIT_LISTS}
    said = option_help(["eval", "audit"], "--report-dir")
    assert len(written) == 5 and all(name in said for name in written), (written, said)


def test_the_demos_preset_says_it_falls_back_to_tiny():
    """`demo --help` said the default was b16, as other commands' does; the demo runs tiny
    where b16's weights are missing."""
    said = option_help(["demo"], "--preset")
    assert "else tiny" in said and "b16" in said, said
