"""Gin parsing shared by every gin-configured command (trainer, LM): overrides must be Python literals, only the
configurables a command builds may be bound, and every dataclass field must hold its annotated type. Each check
fails with one line naming the file and the binding."""
from __future__ import annotations

import ast
import dataclasses
import typing
from typing import Literal

import gin

from sidgr.errors import input_error


def parse_gin(config_file: str | None, bindings, built: tuple[str, ...], user: str) -> None:
    """Parse a gin file plus overrides, then refuse bindings of any configurable outside `built` (`user` names
    the command in the message)."""
    source = config_file or "<bindings>"
    check_override_values(source, bindings)
    gin.clear_config()
    try:
        # not finalized: a locked config would refuse configurables registered later in the same process (a test
        # session that parses a trainer config, then imports the LM)
        gin.parse_config_files_and_bindings([config_file] if config_file else [], list(bindings),
                                            finalize_config=False)
    except (ValueError, SyntaxError) as err:  # gin's message is multi-line; its first line names the problem
        raise input_error(source, "gin", " ".join(bindings) or config_file,
                          str(err).strip().splitlines()[0]) from None
    for (scope, selector) in gin.config._CONFIG.keys():
        name = selector.split(".")[-1]
        if scope or name not in built:
            raise input_error(source, "gin binding", f"{scope + '/' if scope else ''}{selector}",
                              f"never used by the {user} (it builds only {', '.join(built)})")


def check_override_values(source: str, bindings) -> None:
    """Each override's value must be a Python literal (or a gin @reference / %macro): an unquoted string is the
    usual mistake, answered with the quoted form."""
    for binding in bindings:
        name, sep, value = binding.partition("=")
        value = value.strip()
        if not sep or value.startswith(("@", "%")):
            continue  # gin reports these itself
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise input_error(source, "gin", binding, f"the value is not a Python literal; a string needs "
                                                      f"quotes: {name.strip()}='{value}'") from None


def _expected(annotation, value) -> str | None:
    """None when `value` fits the field's annotation, else what was expected."""
    if typing.get_origin(annotation) is Literal:
        options = typing.get_args(annotation)
        return None if value in options else "one of " + ", ".join(repr(o) for o in options)
    checks = {bool: (lambda v: isinstance(v, bool), "True or False"),
              int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
              float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
              str: (lambda v: isinstance(v, str), "a quoted string"),
              tuple: (lambda v: isinstance(v, (tuple, list)), "a tuple like (64, 64, 64)")}
    if annotation not in checks:
        return None
    ok, expected = checks[annotation]
    return None if ok(value) else expected


def check_types(cfg, source: str) -> None:
    """Every field of a config dataclass holds a value of its annotated type (one line naming the binding)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        expected = _expected(hints[f.name], value)
        if expected is not None:
            raise input_error(source, f"{type(cfg).__name__}.{f.name}", value, f"expected {expected}")
