"""User mistakes: one line on stderr and exit code 2, never a traceback."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""


def command(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a console entry point: UserError -> `error: ...` and 2; Ctrl-C -> 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
