"""User-facing errors.

Anything a user can cause (a bad path, a malformed file, a wrong option, a checkpoint of another
model) is raised as a subclass of :class:`FrtrainError` whose message is one line that names the
file or key and the problem. The command-line entry points print that line and exit with status 2
instead of showing a traceback; everything else is a bug and keeps its traceback.
"""


class FrtrainError(Exception):
    """A problem with the user's input, reported as one line."""


class ConfigError(FrtrainError, ValueError):
    """An option that does not exist or has a value out of range."""


class DataError(FrtrainError):
    """A dataset, image or benchmark file that is missing or malformed."""


class CheckpointError(FrtrainError):
    """A checkpoint that cannot be read or belongs to another model."""
