"""How the command line talks to a person: one line per user mistake, warnings for settings that do
nothing, JSON that is always valid.

Every mistake a user can make (a bad option, a missing file, an artifact of the wrong kind, a setting
that fails validation, no broker at the configured address) ends the command with one line on stderr,
``metacart: error: ...``, and exit code 2. ``--debug`` shows the traceback too. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import difflib
import math
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import typer
from pydantic import BaseModel, ValidationError

from metacart.exceptions import UserError
from policy.exceptions import PolicyError
from streams.exceptions import StreamsError

if TYPE_CHECKING:
    from streams.settings import Settings

USAGE_EXIT = 2
USER_ERRORS = (UserError, PolicyError, StreamsError, ValidationError,
               FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
# Variables with the METACART_ prefix that are read by something other than Settings.
OTHER_VARIABLES = ("METACART_BROKER_",)


def one_line(exc: BaseException) -> str:
    """The error as one line: the exception's message with newlines folded."""
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        first = errors[0]
        where = "METACART_" + "__".join(str(part).upper() for part in first["loc"]) if first["loc"] else "settings"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"invalid setting {where}: {first['msg']} (got {first.get('input')!r}){more}"
    if hasattr(exc, "format_message"):  # typer's (vendored click) usage errors
        text = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            text += f" (see `{ctx.command_path} --help`)"
    else:
        text = str(exc) or type(exc).__name__
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)) \
            and exc.filename is not None:
        text = f"{exc.strerror}: {exc.filename}"
    return " ".join(text.replace("Value error, ", "").split())


def run_cli(command: Callable[..., object], argv: list[str], prog_name: str = "metacart") -> int:
    """Run a click/typer command with the error policy above; returns the exit code."""
    debug = "--debug" in argv
    if debug:  # accepted anywhere on the line, not only before the subcommand
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    try:
        code = command(args=argv, prog_name=prog_name, standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print(f"{prog_name}: interrupted", file=sys.stderr)
        return 130
    except (typer.TyperException, *USER_ERRORS) as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed: nothing more to say
            return USAGE_EXIT
        if debug:
            traceback.print_exc()
        print(f"{prog_name}: error: {one_line(exc)}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        print(f"{prog_name}: interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


def setting_variables(model: type[BaseModel], prefix: str = "METACART_") -> set[str]:
    """Every environment variable a settings model reads (nested models joined with ``__``)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        key = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= setting_variables(annotation, key + "__")
        else:
            names.add(key)
    return names


def unknown_variables(environ: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """Warnings for ``METACART_*`` variables that name no setting, with the closest real name."""
    known = sorted(known)
    out = []
    for var in sorted(environ):
        if not var.startswith("METACART_") or var in known or var.startswith(OTHER_VARIABLES):
            continue
        close = difflib.get_close_matches(var, known, n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"{var} names no setting and is ignored{hint}; `metacart settings` lists them")
    return out


def finite(value: object) -> object:
    """``value`` with every NaN or infinity replaced by None, so that it serialises as valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def need_training_extra(command: str) -> None:
    """One line instead of an ImportError when a serving-only install runs a command that trains."""
    from importlib.util import find_spec

    missing = [m for m in ("torch", "matplotlib") if find_spec(m) is None]
    if missing:
        raise UserError(f"`metacart {command}` needs {' and '.join(missing)}, which a serving install leaves "
                        "out: pip install 'metacart[train]'")


def connected(settings: "Settings") -> "Settings":
    """``settings`` once a broker answers at its address (one-line error within ``broker_wait_s``)."""
    from streams.kafka_io import wait_for_broker

    wait_for_broker(settings.kafka, timeout_s=settings.broker_wait_s)
    return settings
