"""Errors that are the user's to fix, and how the trainer's commands report them.

The crawler has its twin (``crawler/errors.py``): neither package imports the other.

A :class:`UserError` carries one sentence, ``<what is wrong> (<how to fix it>)``; the trainer's
command-line entry points print it as ``error: <message>`` on stderr and exit with status 2 (the convention
of argparse and Scrapy's own ``UsageError``), without a traceback. Everything else is a bug and
keeps its traceback. ``HYDRA_FULL_ERROR=1`` (Hydra's own switch) shows the traceback of a
user error too.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["EXIT_USAGE", "UserError", "exit_on_user_error", "find_user_error", "report", "status_on_user_error"]

#: Exit status for a user's mistake (argparse's and Scrapy's usage-error status).
EXIT_USAGE = 2
#: Environment switch that keeps the traceback of a user error (Hydra's own name for it).
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"
#: What to write for a mandatory config value (``???``) the command line left unset.
MISSING_VALUE_HINTS = {"data.root": "DATASET_DIR, the dataset folder: label subfolders of images, see docs/dataset.md"}

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """A mistake in the command line, a setting or the input that the user can fix.

    The message is one line: what is wrong, then in parentheses how to fix it.
    """


def report(error: BaseException) -> int:
    """Print ``error: <message>`` on stderr and return :data:`EXIT_USAGE`."""
    print(f"error: {error}", file=sys.stderr)  # noqa: T201
    return EXIT_USAGE


def find_user_error(error: BaseException | None) -> UserError | None:
    """The :class:`UserError` in ``error``'s chain of causes, or ``None``.

    Hydra's ``instantiate`` re-raises what a ``_target_`` raised as an ``InstantiationException``
    whose ``__cause__`` is the original; Lightning re-raises hooks' errors as they are.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _check_missing_values(cfg: Any) -> None:
    if "omegaconf" not in sys.modules:
        return
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        for key in sorted(OmegaConf.missing_keys(cfg)):
            raise UserError(f"{key} is not set (add {key}={MISSING_VALUE_HINTS.get(key, '<value>')} to the command line)")


def _reported(exc: Exception) -> int:
    """Report the user error in ``exc``'s chain and return the exit status; re-raise otherwise."""
    error = find_user_error(exc)
    if error is None or os.environ.get(FULL_ERROR_ENV) == "1":
        raise exc
    return report(error)


def exit_on_user_error(function: F) -> F:
    """Decorate a Hydra task function (below ``@hydra.main``): a user error ends the process with one line.

    A :class:`UserError` anywhere in a raised exception's chain (:func:`find_user_error`) is
    printed by :func:`report` and the process exits with :data:`EXIT_USAGE` via ``SystemExit``,
    which Hydra lets through (for an exception it would print its own text and exit 1), in a
    multirun too: the sweep stops at that job. A config with a mandatory value left unset
    (``???``, e.g. ``data.root``) is reported the same way before the function runs. With
    ``HYDRA_FULL_ERROR=1`` the exception is raised as is, traceback and all.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            if args:
                _check_missing_values(args[0])
            return function(*args, **kwargs)
        except Exception as exc:
            sys.exit(_reported(exc))

    return wrapper  # type: ignore[return-value]


def status_on_user_error(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate an argparse ``main`` that returns an exit status: a user error is printed as one
    line and ``main`` returns :data:`EXIT_USAGE` (``HYDRA_FULL_ERROR=1``: raised as is)."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except Exception as exc:
            return _reported(exc)

    return wrapper
