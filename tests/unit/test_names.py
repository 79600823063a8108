"""volbackup.stream.names.NameSet: exact, in bounded memory (spilled to a temporary
SQLite file past its bound)."""

from __future__ import annotations

import tracemalloc

from volbackup.stream.names import NameSet


def test_added_names_are_found_and_others_are_not():
    names = NameSet()
    assert names.add("a/b") and names.add("a") and names.add("")
    assert not names.add("a/b") and "a" in names and "" in names
    assert "a/c" not in names and "b" not in names and len(names) == 3
    assert names.add("caf\u00e9") and names.add("x\udcff")  # undecodable bytes too


def test_past_its_memory_bound_the_set_spills_and_stays_exact():
    names = NameSet(memory=64)
    for i in range(1000):
        assert names.add(f"d/f{i}")
    assert names.spilled >= 900 and len(names._memory) < 64 and len(names) == 1000
    assert all(f"d/f{i}" in names for i in range(0, 1000, 7))
    assert not any(f"d/g{i}" in names for i in range(1000))
    assert not names.add("d/f3") and not names.add("d/f999") and names.add("d/f1000")
    names.close()
    assert "d/f3" not in names and not names


def test_memory_stays_flat_past_the_bound():
    def peak(count: int) -> int:
        tracemalloc.start()
        try:
            names = NameSet(memory=256)
            for i in range(count):
                names.add(f"dir/file-{i}")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            names.close()

    assert peak(20_000) - peak(2_000) < 64 << 10
