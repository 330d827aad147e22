"""``frtrain-import-insightface``: an insightface arcface_torch output directory -> one frtrain checkpoint.

    frtrain-import-insightface /work_dirs/ms1mv3_r50 backbone=iresnet50 out=r50.pt num_classes=93431
    frtrain-import-insightface /work_dirs/r100_512 backbone=iresnet100 out=r100.pt backbone.embedding_size=512

Options are key=value, as every frtrain command takes them: ``backbone`` (the frtrain backbone config it was trained
as, configs/backbone), ``out`` (the checkpoint to write), ``num_classes`` (the data set's identity count, checked
against the class vectors), ``backbone.<key>=value`` (overrides of that config). The old ``--backbone X --out F
--num-classes N`` still work, with a warning. The reading of insightface's files is :mod:`frtrain.engine.insightface`.
"""

from __future__ import annotations

import sys

from frtrain.cli import quiet_third_party_warnings
from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine.insightface import import_training_dir, rank_files
from frtrain.errors import ConfigError, first_line


def backbone_config(name: str, overrides: list[str] | None = None):
    """The backbone config ``configs/backbone/<name>.yaml`` (with ``backbone.key=value`` overrides)."""
    from frtrain import config

    try:
        return config.compose("train", [f"backbone={name}"] + list(overrides or [])).backbone
    except Exception as e:
        raise ConfigError(f"backbone={name}: {first_line(e)}") from None


#: old argparse spellings, still read (with a warning): --backbone X, --out X, --num-classes N
_FLAGS = {"--backbone": "backbone", "--out": "out", "--num-classes": "num_classes"}


def parse(argv: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """(directory, options, backbone.key=value overrides) of the command line."""
    import warnings

    directory, options, overrides, i = None, {}, [], 0
    while i < len(argv):
        a = argv[i]
        flag = a.split("=", 1)[0]
        if flag in _FLAGS:
            value = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else None)
            if value is None:
                raise ConfigError(f"{flag}: needs a value; {USAGE}")
            warnings.warn(f"{flag} {value} is now {_FLAGS[flag]}={value}; the old spelling still works for now",
                          FutureWarning, stacklevel=2)
            options[_FLAGS[flag]] = value
            i += 1 if "=" in a else 2
            continue
        if "=" in a and a.split("=", 1)[0] in ("backbone", "out", "num_classes"):
            key, value = a.split("=", 1)
            options[key] = value
        elif a.startswith("backbone.") and "=" in a:
            overrides.append(a)
        elif "=" in a or a.startswith("-"):
            raise ConfigError(f"{a.split('=')[0]}: no such option of frtrain-import-insightface (options: backbone, out, "
                              f"num_classes, backbone.<key>); {USAGE}")
        elif directory is None:
            directory = a
        else:
            raise ConfigError(f"{a}: one insightface output directory only; {USAGE}")
        i += 1
    missing = [k for k in ("backbone", "out") if k not in options]
    if directory is None or missing:
        raise ConfigError(f"give the directory{', ' if missing else ''}{', '.join(k + '=' for k in missing)}; {USAGE}")
    if "num_classes" in options and not options["num_classes"].isdigit():
        raise ConfigError(f"num_classes={options['num_classes']!r}: expected a number of identities")
    return directory, options, overrides


USAGE = "usage: frtrain-import-insightface DIR backbone=NAME out=FILE.pt [num_classes=N] [backbone.key=value ...]"


def main(argv: list[str] | None = None) -> int:
    """``frtrain-import-insightface DIR backbone=iresnet50 out=frtrain.pt [num_classes=N]``."""
    from frtrain.cli import HELP_FLAGS, command_help, one_line_errors

    quiet_third_party_warnings("frtrain-import-insightface")
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv):
        print(command_help("frtrain-import-insightface", __doc__))
        return 0
    with one_line_errors("frtrain-import-insightface"):
        directory, options, overrides = parse(argv)
        num_classes = int(options["num_classes"]) if "num_classes" in options else None
        ckpt = import_training_dir(directory, backbone_config(options["backbone"], overrides), num_classes)
        ckpt_io.save_atomic(ckpt, options["out"])
    c = ckpt["meta"]["num_classes"]
    print(f"wrote {options['out']}: backbone {options['backbone']}"
          + (f", {c} class vectors from {len(rank_files(directory))} rank file(s)" if c else ", no class vectors")
          + f"; fine-tune with frtrain-train trainer.init_from={options['out']} backbone={options['backbone']} head=...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
