"""User-facing errors.

Anything a user can cause (a bad path, a malformed file, a wrong option, a checkpoint of another
model) is raised as a subclass of :class:`FrtrainError` whose message is one line that names the
file or key and the problem. The command-line entry points print that line and exit with status 2
instead of showing a traceback; everything else is a bug and keeps its traceback.
"""


class FrtrainError(Exception):
    """A problem with the user's input, reported as one line.

    Raised in a DataLoader worker, torch re-raises it in the main process as ``type(e)(msg)`` with ``msg`` =
    "Caught DataError in DataLoader worker process 0. Original Traceback ...": the message is then cut back to
    the original one line (the traceback is kept in ``worker_traceback``), so the user sees what went wrong,
    not where the worker was.
    """

    def __init__(self, *args):
        self.worker_traceback = None
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") and \
                "\nOriginal Traceback" in args[0]:
            self.worker_traceback = args[0]
            last = [line for line in args[0].splitlines() if line.strip()][-1]
            name = f"{type(self).__module__}.{type(self).__qualname__}: "
            args = (last[len(name):] if last.startswith(name) else last.split(": ", 1)[-1],)
        super().__init__(*args)


class Interrupted(FrtrainError):
    """The user stopped a run (Ctrl-C): one line saying where it stopped and how to resume; exit status 130."""

    label = "interrupted"
    exit_status = 130


class ConfigError(FrtrainError, ValueError):
    """An option that does not exist or has a value out of range."""


class DataError(FrtrainError):
    """A dataset, image or benchmark file that is missing or malformed."""


class CheckpointError(FrtrainError):
    """A checkpoint that cannot be read or belongs to another model."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of ``error``'s message, or its type's name when it has none (``MemoryError()``)."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def brief(value, limit: int = 80) -> str:
    """``repr(value)`` on one line and at most ``limit`` characters (a tensor by its shape and dtype), for messages
    that quote what a file holds."""
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return f"<{value.dtype} tensor of shape {tuple(value.shape)}>"
    except ImportError:  # pragma: no cover
        pass
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
