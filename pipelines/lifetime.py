"""Child processes that end with the process that started them, even when it is killed with
``kill -9``: the precompute's layer workers, the default run's precompute under `python main.py`,
and the jobs the server starts.

Kept apart from the modules that use it, and free of heavy imports: it runs in the forked child
before ``exec`` (``preexec_fn``), where an import of numpy or scipy once cost `python main.py`'s
child 0.3 s before it could even start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# Resolved once, at import in the parent: a preexec_fn runs between fork and exec, where a
# multi-threaded server must not load libraries (a lock another thread held stays locked).
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when the thread that started it ends (Linux; a
    no-op elsewhere). ``parent``: that process's pid, taken before the fork (``os.getpid()``
    there): if it ended before the request took effect, this process exits now. (Comparing
    with pid 1 instead would end every child of a parent that is itself pid 1, as a
    container's entry point is.)"""
    if _LIBC is None:
        return
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
