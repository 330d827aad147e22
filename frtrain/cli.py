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
import textwrap
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


HELP_FLAGS = ("--help", "-h")


def command_help(program: str, doc: str, config_name: str | None = None) -> str:
    """``<program> --help``: the command's own usage (its module docstring) and, for a Hydra command, its config
    groups with their options and the way options are given (not Hydra's generic page)."""
    lines = [doc.strip(), ""]
    if config_name is None:
        return "\n".join(lines)
    from omegaconf import OmegaConf

    from frtrain import config

    try:
        composed = config.compose(config_name, [], return_hydra_config=True)
        choices = {k: v for k, v in composed.hydra.runtime.choices.items() if not k.startswith("hydra/")
                   and k not in ("data/loader",)}
        if "benchmarks" in composed and "benchmarks" not in choices:
            choices["benchmarks"] = ",".join(composed.benchmarks or {}) or None
    except Exception:  # the help must come out even when a config does not compose
        choices = {}
    lines += textwrap.wrap(f"Options are key=value, as Hydra takes them: group=option picks a file of "
                           f"configs/<group>, key=value or group.key=value sets a value, +key=value adds one. "
                           f"{program} --cfg job prints the composed config; {program} --hydra-help lists Hydra's own "
                           "flags.", 110)
    lines += [""]
    tail = [f"Config groups of {program} (now: the current choice):"]
    own = []
    for k in (composed.keys() if choices else []):
        if k in choices or k == "hydra":
            continue
        if OmegaConf.is_missing(composed, k):
            own.append(f"  {k}=???  (required)")
        elif not OmegaConf.is_config(composed._get_node(k)):
            own.append(f"  {k}={composed._get_node(k)._value()}")
    if own:
        lines += [f"Options of {program} (now):"] + own + [""]
    width = max((len(g) for g in choices), default=0)
    for group in sorted(choices):
        options = config.group_options(group)
        listed = ", ".join(options) if len(options) <= 12 else ", ".join(options[:12]) + f", ... ({len(options)})"
        tail.append(f"  {group:<{width}}  {listed}  (now: {choices[group]})")
    return "\n".join(lines + tail)


def hydra_entry_point(program: str, config_name: str, task, argv: list[str] | None = None,
                      doc: str | None = None) -> None:
    """Run ``task(cfg)`` under Hydra for ``configs/<config_name>.yaml`` with the command line ``argv``; ``--help``
    prints :func:`command_help` with ``doc`` (the command's usage)."""
    import hydra

    from frtrain import config

    quiet_third_party_warnings(program)
    config.register_schemas()
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv):
        print(command_help(program, doc or f"usage: {program} key=value ...", config_name))
        return
    argv = config.prepare_argv(argv)
    with one_line_errors(program):
        config.check_command_line(config_name, argv)
    sys.argv = [sys.argv[0]] + argv

    @hydra.main(config_path="pkg://frtrain.configs", config_name=config_name, version_base="1.3")
    def run(cfg):
        with one_line_errors(program):
            return task(cfg)

    run()
