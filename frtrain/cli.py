"""What the command-line entry points share: the Hydra entry, one-line errors, quiet libraries, run directories.

Every ``frtrain-*`` command that takes Hydra overrides runs :func:`hydra_entry_point`: deprecated spellings
are rewritten (:func:`frtrain.config.prepare_argv`), the command line is composed once and a bad override
stops with one line naming the key and the closest valid names (:func:`frtrain.config.check_command_line`),
then Hydra runs the task. A :class:`~frtrain.errors.FrtrainError` raised by the task is printed once, as
``<program>: error: <message>``, and the process exits with status 2 (the run's log file gets it too).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import warnings

from frtrain.errors import FrtrainError
from frtrain.log_files import to_log_files

log = logging.getLogger("frtrain")


@contextlib.contextmanager
def one_line_errors(program: str):
    """A :class:`FrtrainError` inside becomes ``<program>: error: <message>`` on stderr and exit status 2.

    Set ``FRTRAIN_TRACEBACK=1`` to see the full traceback instead.
    """
    try:
        yield
    except FrtrainError as e:
        if os.environ.get("FRTRAIN_TRACEBACK"):
            raise
        line = f"{program}: {getattr(e, 'label', 'error')}: {' '.join(str(e).split())}"  # one line, whatever it quotes
        to_log_files(line, logging.ERROR)
        print(line, file=sys.stderr, flush=True)
        sys.exit(getattr(e, "exit_status", 2))
    except KeyboardInterrupt:  # before or after the training loop (which says where it stopped itself)
        if os.environ.get("FRTRAIN_TRACEBACK"):
            raise
        to_log_files(f"{program}: interrupted", logging.ERROR)
        print(f"{program}: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


def report_errors(program: str):
    """Decorator form of :func:`one_line_errors`, for the plain (argparse) scripts."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with one_line_errors(program):
                return fn(*args, **kwargs)

        return inner

    return wrap


def quiet_third_party_warnings(program: str = "frtrain") -> None:
    """Silence warnings from libraries that say nothing a user can act on; frtrain's own deprecation warnings
    are one line: ``<program>: warning: <message>``."""
    warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="tensorboard")
    warnings.filterwarnings("ignore", message=".*Error fetching version info.*")  # albumentations update check
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FutureWarning) and "frtrain" in filename:
            print(f"{program}: warning: {message}", file=sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def run_directory(cfg) -> str:
    """The run's own directory: ``cfg.output_dir``, or Hydra's output directory when it is not set."""
    if cfg.get("output_dir"):
        return os.path.abspath(os.path.expanduser(str(cfg.output_dir)))
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def hydra_entry_point(program: str, config_name: str, task, argv: list[str] | None = None) -> None:
    """Run ``task(cfg)`` under Hydra for ``configs/<config_name>.yaml`` with the command line ``argv``."""
    import hydra

    from frtrain import config

    quiet_third_party_warnings(program)
    config.register_schemas()
    argv = config.prepare_argv(list(sys.argv[1:] if argv is None else argv))
    with one_line_errors(program):
        config.check_command_line(config_name, argv)
    sys.argv = [sys.argv[0]] + argv

    @hydra.main(config_path="pkg://frtrain.configs", config_name=config_name, version_base="1.3")
    def run(cfg):
        with one_line_errors(program):
            return task(cfg)

    run()
