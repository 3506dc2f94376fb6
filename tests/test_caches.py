"""The dashboard's get-or-compute cache: memory, then disk, then compute, in one function."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dashboard.caches import DiskStore, TieredCache, array_codec, method_codec


def tiered(tmp_path: Path, memory_bytes: int = 1 << 20) -> TieredCache:
    return TieredCache(memory_bytes, DiskStore(lambda: tmp_path / "cache", 1 << 24))


class Counter:
    """A compute function that counts its calls and yields ``key`` plus one neighbour."""

    def __init__(self, key: str, neighbour: str | None = None, delay: float = 0.0):
        self.key, self.neighbour, self.delay, self.calls = key, neighbour, delay, 0

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        time.sleep(self.delay)
        result = {self.key: np.arange(6, dtype=np.float32).reshape(2, 3)}
        if self.neighbour:
            result[self.neighbour] = np.ones((2, 3), dtype=np.float32)
        return result


def test_memory_then_disk_then_compute(tmp_path: Path) -> None:
    codec = array_codec((2, 3))
    cache = tiered(tmp_path)
    compute = Counter("a", neighbour="b")
    first = cache.get_or_compute("a", compute, codec)
    assert (first.source, first.notice, compute.calls) == ("computed", None, 1)
    assert cache.get_or_compute("a", compute, codec).source == "memory"
    # What the same computation yielded is in memory too, but only the key asked for on disk.
    assert cache.get_or_compute("b", Counter("b"), codec).source == "memory"
    assert cache.disk is not None and cache.disk.get("b") is None
    restarted = tiered(tmp_path)
    from_disk = restarted.get_or_compute("a", compute, codec)
    assert from_disk.source == "disk" and compute.calls == 1
    np.testing.assert_array_equal(from_disk.value, first.value)
    assert restarted.get_or_compute("a", compute, codec).source == "memory"


def test_without_a_codec_nothing_goes_to_disk(tmp_path: Path) -> None:
    cache = tiered(tmp_path)
    cache.get_or_compute("png", lambda: {"png": b"\x89PNG"})
    assert cache.disk is not None and cache.disk.get("png") is None
    assert TieredCache(1 << 10).get_or_compute("x", lambda: {"x": b"1"}).source == "computed"


@pytest.mark.parametrize(
    "garbage",
    [b"\x93NUMPY garbage, not an array", b"", "not bytes"],
)
def test_a_corrupt_disk_entry_is_replaced_and_reported(tmp_path: Path, garbage: object) -> None:
    codec = array_codec((2, 3))
    cache = tiered(tmp_path)
    cache.disk.cache.set("a", garbage)  # type: ignore[union-attr]
    result = cache.get_or_compute("a", Counter("a"), codec, what="activations of sample 3")
    assert result.source == "computed"
    assert result.notice is not None and result.notice.startswith(
        "The cached activations of sample 3 were unreadable"
    )
    assert "recomputed" in result.notice
    assert tiered(tmp_path).get_or_compute("a", Counter("a"), codec).source == "disk"


def test_a_wrong_shape_is_corrupt(tmp_path: Path) -> None:
    cache = tiered(tmp_path)
    cache.get_or_compute("a", Counter("a"), array_codec((2, 3)))
    assert tiered(tmp_path).get_or_compute("a", Counter("a"), array_codec((3, 2))).notice


def test_method_codec_round_trip_and_size_check() -> None:
    maps = {
        "map": np.full((4, 4), 0.5, np.float16),
        "occluded_probability": np.arange(6, dtype=np.float32).reshape(2, 3),
    }
    codec = method_codec(4)
    decoded = codec.decode(codec.encode(maps))
    assert decoded.keys() == maps.keys()
    for name, values in maps.items():
        np.testing.assert_array_equal(decoded[name], values)
        assert decoded[name].dtype == values.dtype
    picture = {"map": np.zeros((4, 4, 3), np.uint8)}
    np.testing.assert_array_equal(codec.decode(codec.encode(picture))["map"], picture["map"])
    with pytest.raises(ValueError, match="expected \\(8, 8\\)"):
        method_codec(8).decode(codec.encode(maps))
    with pytest.raises(ValueError, match="expected \\(4, 4\\)"):
        codec.decode(codec.encode({"other": maps["map"]}))
    with pytest.raises(ValueError):
        codec.decode(b"PK\x03\x04 truncated")


def test_concurrent_requests_of_one_flight_compute_once(tmp_path: Path) -> None:
    """Two layers of one sample asked for at once: one forward pass serves both."""
    cache = tiered(tmp_path)
    compute = Counter("sample/a", neighbour="sample/b", delay=0.2)
    sources: dict[str, str] = {}

    def ask(key: str) -> None:
        sources[key] = cache.get_or_compute(key, compute, flight="sample").source

    threads = [threading.Thread(target=ask, args=(key,)) for key in ("sample/a", "sample/b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert compute.calls == 1
    assert sorted(sources.values()) == ["computed", "memory"]


def test_a_disk_that_cannot_be_opened_only_costs_speed(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = TieredCache(1 << 20, DiskStore(lambda: blocker / "cache", 1 << 20))
    codec = array_codec((2, 3))
    assert cache.get_or_compute("a", Counter("a"), codec).source == "computed"
    assert cache.get_or_compute("a", Counter("a"), codec).source == "memory"


def test_a_computation_that_does_not_yield_its_key_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="did not yield it"):
        tiered(tmp_path).get_or_compute("a", Counter("b"))


def test_the_server_divides_its_memory_budget_between_its_workers(tmp_path: Path) -> None:
    """``serve --cache-mb`` is the whole server's: each worker keeps its share of it (and of
    the PNG budget), never less than 1 MiB."""
    from dashboard.on_demand import DERIVED_BYTES, OnDemand

    service = OnDemand(tmp_path)
    service.limit_memory(2, 256 << 20)
    assert service.results.memory.max_bytes == 128 << 20
    assert service.derived.memory.max_bytes == DERIVED_BYTES // 2
    service.limit_memory(4, 2 << 20)
    assert service.results.memory.max_bytes == 1 << 20
