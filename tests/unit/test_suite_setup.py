"""The parallel suite's own set-up: what `--dist loadgroup` relies on.

pytest-xdist sends the tests of one `xdist_group` to one worker by appending `@group` to each
item's `_nodeid` in the worker. pytest 9.2 computes `nodeid` from a structured id instead, so
the suffix is silently lost: every group is split over the workers, and each worker builds the
shared module fixtures (the fidelity corpus, a second engine, a fresh install) again. Found by
a CI run whose install fixture ran twice; pyproject.toml keeps pytest below 9.2 for it.
"""

from __future__ import annotations


def test_an_items_nodeid_follows_what_xdist_sets(request):
    item = request.node
    original = item.nodeid
    try:
        item._nodeid = f"{original}@group"
        assert item.nodeid == f"{original}@group"
    finally:
        item._nodeid = original
