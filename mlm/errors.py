"""User mistakes: one line on stderr and exit code 2, never a traceback."""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable


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
