"""Writing a line to the run's log file (``train.log``) without printing it on the console."""

from __future__ import annotations

import logging

log = logging.getLogger("frtrain")


def to_log_files(message: str, level: int = logging.INFO) -> None:
    """Write ``message`` to the file handlers of the logging tree only: the console keeps its progress bar or its
    one error line, the log file gets the full record."""
    if not log.isEnabledFor(level):
        return
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers + log.handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)
