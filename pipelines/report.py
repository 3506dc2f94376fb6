"""The one way LayerScope tells a person about a problem that does not stop the work.

``warn(message)`` (and ``note(message)`` for a choice the run made on its own) log to the
``layerscope`` logger, which has exactly one handler: it writes ``warning: <message>`` (or
``note: ...``) as one line on stderr through ``tqdm.write``, which lifts any progress bar off the
line first and redraws it after, so a warning never lands in the middle of a bar. The logger does
not propagate: a root handler set up by a host (Celery, gunicorn, ``logging.basicConfig``) would
otherwise print every message a second time. The handler is attached on import, so the library
used on its own (no CLI, no server) still prints each message once.

``install()`` also routes Python ``warnings`` (raised by torch, openTSNE, ...) into the same
channel; the CLI and the dashboard call it at start. Messages carry no ``warning:`` prefix of
their own: the handler adds it.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from typing import TextIO

from tqdm import tqdm

LOGGER = logging.getLogger("layerscope")

_PREFIX = {logging.WARNING: "warning", logging.INFO: "note"}

# Messages sent with ``once=True``: for warnings raised on every batch or request (the
# ``warnings`` module's default filter used to show those once per process).
_said: set[str] = set()
_said_lock = threading.Lock()


class _StderrLines(logging.Handler):
    """One ``<level>: <message>`` line on the current stderr, kept clear of tqdm's bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prefix = _PREFIX.get(record.levelno, record.levelname.lower())
            # sys.stderr looked up on each message: pytest and callers may swap it.
            tqdm.write(f"{prefix}: {record.getMessage()}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


def _configure() -> None:
    if not any(isinstance(handler, _StderrLines) for handler in LOGGER.handlers):
        LOGGER.addHandler(_StderrLines())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


_configure()


def warn(message: str, *, once: bool = False) -> None:
    """Tell the user about a problem that does not stop the work. ``once``: only the first time
    this exact message is sent in this process (for warnings raised per batch or per request)."""
    if once:
        with _said_lock:
            if message in _said:
                return
            _said.add(message)
    LOGGER.warning(message)


def note(message: str) -> None:
    """Tell the user about a choice made for them (e.g. the forward pass's precision)."""
    LOGGER.info(message)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # The message only: file names and source lines of library internals mean nothing to a user.
    warn(str(message))


def install() -> None:
    """Route Python ``warnings`` into this channel too. Idempotent; the ``warnings`` filters still
    decide which are shown (by default each once per code location)."""
    _configure()
    warnings.showwarning = _show_warning
