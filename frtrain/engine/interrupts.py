"""Ctrl-C during training: a step is never cut in half (see :class:`InterruptGuard`)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger("frtrain")


class InterruptGuard:
    """Ctrl-C as KeyboardInterrupt, except inside :meth:`deferred` sections (a training step), where it waits until
    the section ends; a second Ctrl-C inside the section stops at once (``forced``).

    Python runs signal handlers in the main thread between bytecodes, so blocking the signal at the OS level would
    not protect a step; a handler that only sets a flag inside the section does. The training loader's workers
    ignore SIGINT (:func:`frtrain.data.loader.make_loader`), so the step in progress still gets its batches. Outside
    the main thread (tests that train in a thread) it does nothing.
    """

    def __init__(self):
        self.critical, self.pending, self.forced, self.previous = False, False, False, None

    def _handler(self, signum, frame):
        if self.critical and not self.pending:
            self.pending = True
            log.warning("Ctrl-C: stopping after this step (press it again to stop at once, without saving)")
        else:
            self.forced = self.critical
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
        return False

    @contextlib.contextmanager
    def deferred(self):
        self.critical = True
        try:
            yield
        finally:
            self.critical = False

    def raise_pending(self) -> None:
        """Act on a Ctrl-C that came during the last deferred section."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt
