"""Shared behaviour of the command-line entry points: one-line errors, logging, threads."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings

from frtrain.errors import FrtrainError

log = logging.getLogger("frtrain")


def report_errors(program: str):
    """Decorator: a :class:`FrtrainError` is printed as ``<program>: error: <message>`` with exit status 2.

    Set ``FRTRAIN_TRACEBACK=1`` to see the full traceback instead.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except FrtrainError as e:
                if os.environ.get("FRTRAIN_TRACEBACK"):
                    raise
                if log.hasHandlers():  # Hydra's log file; without handlers Python would print it a second time
                    log.error("%s", e)
                print(f"{program}: error: {e}", file=sys.stderr, flush=True)
                sys.exit(2)

        return inner

    return wrap


def quiet_third_party_warnings() -> None:
    """Silence warnings from libraries that say nothing a user can act on."""
    warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="tensorboard")
    warnings.filterwarnings("ignore", message=".*Error fetching version info.*")  # albumentations update check
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
