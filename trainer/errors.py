"""Errors that are the user's to fix, and how the trainer's commands report them.

The crawler has its twin (``crawler/errors.py``): neither package imports the other.

A :class:`UserError` carries one sentence, ``<what is wrong> (<how to fix it>)``; the trainer's
command-line entry points print it as ``error: <message>`` on stderr and exit with status 2 (the convention
of argparse and Scrapy's own ``UsageError``), without a traceback. Everything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import sys

__all__ = ["EXIT_USAGE", "UserError", "report"]

#: Exit status for a user's mistake (argparse's and Scrapy's usage-error status).
EXIT_USAGE = 2


class UserError(Exception):
    """A mistake in the command line, a setting or the input that the user can fix.

    The message is one line: what is wrong, then in parentheses how to fix it.
    """


def report(error: BaseException) -> int:
    """Print ``error: <message>`` on stderr and return :data:`EXIT_USAGE`."""
    print(f"error: {error}", file=sys.stderr)  # noqa: T201
    return EXIT_USAGE
