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
