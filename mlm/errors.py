"""User mistakes: one line on stderr and exit code 2, never a traceback."""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""


class Stopped(Exception):
    """A run stopped on purpose (a signal, a diverging loss): one line, and `code` as exit code
    (128 + the signal's number for a signal, as shells report it; 1 for a failed run)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def command(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a console entry point: UserError -> `error: ...` and 2; Stopped -> its code;
    Ctrl-C -> 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Stopped as exc:
            print(f"stopped: {exc}", file=sys.stderr)
            return exc.code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse for our commands: a mistake is one line (not the usage block) and exit code 2,
    and a flag must be written in full (a misspelt flag is never taken for another one)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        # argparse takes "-1e-3" or "-inf" for a flag (only "-1" and "-0.5" look like numbers
        # to it), so `--learning_rate -1e-3` said "expected one argument" instead of naming
        # the allowed range: such a value is joined to its flag ("--flag=-1e-3") first.
        args = list(sys.argv[1:] if args is None else args)
        joined, i = [], 0
        while i < len(args):
            if (args[i].startswith("--") and "=" not in args[i] and i + 1 < len(args)
                    and _negative_number(args[i + 1])):
                joined.append(f"{args[i]}={args[i + 1]}")
                i += 2
            else:
                joined.append(args[i])
                i += 1
        return super().parse_known_args(joined, namespace)


def _negative_number(text: str) -> bool:
    """Does `text` read as a negative number (-1e-3, -inf, -nan), not as a flag?"""
    if not text.startswith("-") or text.startswith("--"):
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (a library's multi-line message inside ours)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def create_folder(path, flag: str = "--output_dir") -> None:
    """Create an output folder (and its parents), or say in one line why it cannot be made (a
    file on its path, no permission), naming the setting `flag`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot create it ({exc.strerror or exc})") from None
