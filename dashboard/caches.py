"""The dashboard's caches: one get-or-compute function over a bounded memory LRU in front of an
optional disk cache, and where the disk caches live.

``TieredCache.get_or_compute`` is the only place that sequences memory -> disk -> compute: the
on-demand results (activations, class explanations) use it with a disk and a codec, rendered
PNGs and channel scores with memory only. The disk is a ``diskcache`` under
``<data-dir>/cache/<name>/``, so results survive restarts and are shared with Celery workers.
The dashboard only reads runs, so a read-only data dir must still serve: its caches then live
in a per-user folder under the system's temp dir instead, with one warning saying where.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from pipelines import report

CACHE_DIR_NAME = "cache"


def cache_dir(data_dir: Path, name: str) -> Path:
    """``<data-dir>/cache/<name>``, created; when the data dir cannot be written, a folder
    of the same name under ``$TMPDIR/layerscope-cache-<user>/<hash of the data dir>/``."""
    preferred = Path(data_dir) / CACHE_DIR_NAME / name
    if writable_dir(preferred):
        return preferred
    key = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    fallback = Path(tempfile.gettempdir()) / f"layerscope-cache-{os.getuid()}" / key / name
    fallback.mkdir(parents=True, exist_ok=True, mode=0o700)
    report.warn(
        f"{Path(data_dir).resolve()} is not writable; keeping the {name} cache in {fallback} instead"
    )
    return fallback


def writable_dir(path: Path) -> bool:
    """True if ``path`` exists (or could be created) and a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


# ---- memory ----------------------------------------------------------------------------------


class ByteLRU:
    """An LRU mapping bounded by the summed ``nbytes`` of its values (dicts of arrays count
    each array); thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def size_of(value: Any) -> int:
        if isinstance(value, np.ndarray):
            return int(value.nbytes)
        if isinstance(value, bytes):
            return len(value)
        if isinstance(value, dict):
            return sum(ByteLRU.size_of(v) for v in value.values())
        return 64

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Hashable, value: Any) -> None:
        size = self.size_of(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self._bytes += size
            # Always keep the newest entry, even if it alone exceeds the budget.
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


# ---- disk ------------------------------------------------------------------------------------


# diskcache keeps one SQLite connection per thread, each with its own page cache (32 MiB by
# default) and a memory map of the database (64 MiB): with a server worker's request threads that
# is hundreds of MiB per process for an index whose entries are mostly files. The OS caches the
# files anyway; a small page cache and no map keep each worker's memory bounded.
SQLITE_SETTINGS = {"sqlite_cache_size": 1024, "sqlite_mmap_size": 0}  # 1,024 pages: 4 MiB


class DiskStore:
    """A size-bounded ``diskcache`` of bytes, opened on first use. A cache that cannot be opened,
    written or cleaned only costs speed: those failures are logged and the page carries on. A
    read that fails raises ``ValueError`` (the entry is unreadable, so the caller replaces it).
    """

    def __init__(self, directory: Callable[[], Path], size_limit: int):
        self._directory = directory  # resolved lazily: finding a writable folder touches disk
        self._size_limit = size_limit
        self._cache: Any = None
        self._failed: str | None = None
        self._lock = threading.Lock()

    @property
    def cache(self) -> Any:
        """The diskcache, or None if it cannot be opened here."""
        with self._lock:
            if self._cache is None and self._failed is None:
                import diskcache

                try:
                    self._cache = diskcache.Cache(
                        str(self._directory()), size_limit=self._size_limit, **SQLITE_SETTINGS
                    )
                except Exception as exc:  # noqa: BLE001 - a broken cache must not break the page
                    self._failed = f"{type(exc).__name__}: {exc}"
                    report.warn(f"disk cache disabled: {self._failed}")
            return self._cache

    def get(self, key: str) -> bytes | None:
        cache = self.cache
        if cache is None:
            return None
        try:
            value = cache.get(key)
        except Exception as exc:  # noqa: BLE001 - a truncated or unreadable entry file
            raise ValueError(f"unreadable entry: {type(exc).__name__}: {exc}") from exc
        if value is not None and not isinstance(value, bytes):
            raise ValueError(f"cache entry is a {type(value).__name__}, not bytes")
        return value

    def set(self, key: str, value: bytes) -> None:
        cache = self.cache
        if cache is None:
            return
        try:
            cache.set(key, value)
        except Exception as exc:  # noqa: BLE001 - a full or read-only disk only costs speed
            report.warn(f"disk cache write failed for {key}: {exc}")

    def delete(self, key: str) -> None:
        cache = self.cache
        if cache is None:
            return
        try:
            cache.delete(key)
        except Exception as exc:  # noqa: BLE001
            report.warn(f"disk cache delete failed for {key}: {exc}")


# ---- codecs ----------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a value goes to and from the disk; ``decode`` raises ValueError on anything that is
    not a well-formed value (a corrupt entry)."""

    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


def array_codec(shape: tuple[int, ...]) -> Codec[np.ndarray]:
    """One array of ``shape``, as ``.npy`` bytes (no pickle)."""

    def encode(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        return buffer.getvalue()

    def decode(data: bytes) -> np.ndarray:
        array = _load(data)
        if not isinstance(array, np.ndarray) or tuple(array.shape) != tuple(shape):
            found = getattr(array, "shape", type(array).__name__)
            raise ValueError(f"cached array has shape {found}, expected {shape}")
        return array

    return Codec(encode, decode)


def method_codec(size: int) -> Codec[dict[str, np.ndarray]]:
    """One method's explanation of one sample: its (size, size) or (size, size, 3) display map
    under "map" and any extras (occlusion's probabilities) under their names, as ``.npz`` bytes
    (no pickle)."""

    def encode(arrays: dict[str, np.ndarray]) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **dict[str, Any](arrays))
        return buffer.getvalue()

    def decode(data: bytes) -> dict[str, np.ndarray]:
        archive = _load(data)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("cache entry is not an .npz archive")
        with archive:
            try:
                arrays = {name: archive[name] for name in archive.files}
            except Exception as exc:  # noqa: BLE001 - a missing or truncated member
                raise ValueError(f"not readable maps: {type(exc).__name__}: {exc}") from exc
        shown = arrays.get("map")
        if shown is None or tuple(shown.shape[:2]) != (size, size):
            found = None if shown is None else shown.shape
            raise ValueError(f"cached map has shape {found}, expected ({size}, {size})")
        return arrays

    return Codec(encode, decode)


def _load(data: bytes) -> Any:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a corrupt entry
        raise ValueError(f"not a readable array: {type(exc).__name__}: {exc}") from exc


# ---- memory in front of disk -----------------------------------------------------------------

Source = Literal["memory", "disk", "computed"]


@dataclass(frozen=True)
class Cached(Generic[T]):
    """A value and where it came from; ``notice`` is a sentence for the page when something
    unusual happened (a corrupt disk entry was replaced), else None."""

    value: T
    source: Source
    notice: str | None = None


class _Flight:
    """The lock one computation holds, so concurrent requests for it compute it once. Used as
    a context manager, so the ``with`` block keeps it alive (the table only holds it weakly)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


class TieredCache:
    """A bounded memory LRU in front of an optional disk store; see ``get_or_compute``."""

    def __init__(self, memory_bytes: int, disk: DiskStore | None = None):
        self.memory = ByteLRU(memory_bytes)
        self.disk = disk
        # Weak values: a flight's lock lives while some request holds it, so the table stays
        # as small as the number of computations in progress.
        self._flights: weakref.WeakValueDictionary[str, _Flight] = weakref.WeakValueDictionary()
        self._flights_lock = threading.Lock()

    def _flight(self, key: str) -> _Flight:
        with self._flights_lock:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
            return flight

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], Mapping[str, T]],
        codec: Codec[T] | None = None,
        *,
        flight: str | None = None,
        what: str = "results",
    ) -> Cached[T]:
        """The value of ``key``: from memory, else from disk (with a ``codec``), else computed.

        ``compute()`` returns everything one computation yields, by key, ``key`` included (one
        forward pass yields every layer of a sample): all of it is kept in memory, so the next
        layer asked for is a memory hit, and only ``key``'s value goes to disk. Requests with
        the same ``flight`` (default: ``key``) wait for one another, so concurrent requests for
        values of one computation run it once. A disk entry ``codec`` cannot decode is deleted
        and recomputed, and the result's notice says so, naming ``what`` was cached.
        """
        with self._flight(flight or key):
            value = self.memory.get(key)
            if value is not None:
                return Cached(value, "memory")
            notice = None
            store = self.disk if codec is not None else None
            if store is not None and codec is not None:
                try:
                    data = store.get(key)
                    if data is not None:
                        value = codec.decode(data)
                        self.memory.put(key, value)
                        return Cached(value, "disk")
                except ValueError as exc:
                    report.warn(f"dropping corrupt cache entry {key}: {exc}")
                    store.delete(key)
                    notice = (
                        f"The cached {what} were unreadable ({exc}); they were deleted and "
                        "recomputed."
                    )
            computed = compute()
            if key not in computed:
                raise KeyError(f"computing {key!r} did not yield it (got {len(computed)} keys)")
            for computed_key, computed_value in computed.items():
                self.memory.put(computed_key, computed_value)
        value = computed[key]
        if store is not None and codec is not None:
            # Outside the flight: other requests for this value are served from memory now.
            store.set(key, codec.encode(value))
        return Cached(value, "computed", notice)
