"""Old spellings of the CLI's options, kept for one release: ``Formerly`` marks an
option's old flag, ``Typer`` gives each command a hidden option per old flag that
hands its value to the new one and prints a deprecation line. ``options.py`` offers
them to the command modules."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Annotated, Any, Optional, get_args

import typer

KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY
CONTEXT = "usesearch__context"  # the command's click context, for the old spellings' check
OLD_GIVEN = "usesearch.old_spellings"  # in contexts' meta: per context, the parameters an old flag was given for

FORMERLY = "__formerly_"  # an old spelling's hidden parameter: the new one's name, this, its number


def meaning(param_name: str) -> str:
    """The parameter an old spelling's hidden one stands for (the name itself otherwise)."""
    return param_name.split(FORMERLY, 1)[0]


# -- old spellings, kept for one release -------------------------------------------------
def deprecated(note: str) -> None:
    print(f"deprecated: {note}; the old spelling goes in the next release", file=sys.stderr)


class Formerly:
    """Annotated metadata: an old spelling (one or more flags) of the option or
    argument it annotates. ``note`` is the deprecation line (default: "`OLD` is now `NEW`")."""

    def __init__(self, *flags: str, note: str = ""):
        self.flags, self.note = flags, note


def signature_of(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature with its parameters' annotations evaluated, as Typer reads
    them (the Annotated objects). An annotation naming what is imported only for type
    checking stays as written: such a parameter is no option, it receives a group's object."""
    signature = inspect.signature(fn)
    namespace = vars(sys.modules[inspect.unwrap(fn).__module__])

    def evaluated(annotation: Any) -> Any:
        try:
            return eval(annotation, namespace) if isinstance(annotation, str) else annotation
        except NameError:
            return annotation

    return signature.replace(
        parameters=[p.replace(annotation=evaluated(p.annotation)) for p in signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )


def taking_old_spellings(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with a hidden option for each old spelling its parameters declare.

    An old spelling given hands its value to the parameter as the context's default
    for it (click's ``default_map``): the parameter is processed after the options on
    the command line, so it finds the value there and runs it through its own type and
    checks, and a required parameter is not missing. Both spellings given are refused
    (one of the values was dropped without a word)."""
    signature = signature_of(command)
    aliases = []
    for param in signature.parameters.values():
        olds = [m for m in get_args(param.annotation)[1:] if isinstance(m, Formerly)]
        for i, old in enumerate(olds):
            hidden = typer.Option(*old.flags, hidden=True, expose_value=False, callback=_handing_to(param.name, old))
            annotation: Any = Annotated[Optional[get_args(param.annotation)[0]], hidden]
            aliases.append(
                inspect.Parameter(f"{param.name}{FORMERLY}{i}", KEYWORD_ONLY, default=None, annotation=annotation)
            )
    if not aliases:
        return command

    @functools.wraps(command)
    def taking(*args: Any, **kwargs: Any) -> Any:
        for alias in aliases:
            kwargs.pop(alias.name, None)
        ctx = kwargs[own_context] if own_context else kwargs.pop(CONTEXT)
        for name, flag in ctx.meta.get(OLD_GIVEN, {}).get(ctx, {}).items():
            if ctx.get_parameter_source(name).name != "DEFAULT_MAP":  # the new spelling given too
                param = next(p for p in ctx.command.params if p.name == name)
                new = max(param.opts, key=len) if param.param_type_name == "option" else name.upper()
                raise typer.BadParameter(f"{flag} is the old spelling of {new}: give one of them, not both")
        return command(*args, **kwargs)

    # The command's context (Typer hands in one, to the command's own parameter if it has one).
    own_context = next((p.name for p in signature.parameters.values() if p.annotation is typer.Context), None)
    context = [] if own_context else [inspect.Parameter(CONTEXT, KEYWORD_ONLY, annotation=typer.Context)]
    parameters = [*signature.parameters.values(), *aliases, *context]
    taking.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]  # read by Typer
    taking.__annotations__ = {p.name: p.annotation for p in parameters}
    return taking


def _handing_to(name: str, old: Formerly) -> Callable[..., None]:
    def hand(ctx: typer.Context, value: Any) -> None:
        if value is None or (isinstance(value, (list, tuple)) and not value):
            return
        if not ctx.resilient_parsing:
            deprecated(old.note or f"`{max(old.flags, key=len)}` is now `--{name.replace('_', '-')}`")
        ctx.default_map = {**(ctx.default_map or {}), name: value}
        # By context: click shares ``meta`` with the commands a command runs (``demo``
        # runs ``index`` and ``query``), which have no such parameter.
        ctx.meta.setdefault(OLD_GIVEN, {}).setdefault(ctx, {})[name] = max(old.flags, key=len)

    return hand


class Typer(typer.Typer):
    """A group of usesearch commands: each takes the old spellings its parameters declare."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        register = super().command(*args, **kwargs)

        def decorator(command: Callable[..., Any]) -> Callable[..., Any]:
            register(taking_old_spellings(command))
            return command

        return decorator
