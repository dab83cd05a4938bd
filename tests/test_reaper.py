"""The orphan reaper takes our zombies, never the pool's own children."""

from __future__ import annotations

import os
import time

import pytest

from supervisor import reaper
from supervisor.reaper import MANAGED_PIDS, reap_orphans


def _spawn_exiting() -> int:
    return os.posix_spawn("/bin/true", ["true"], os.environ)


def _until_zombie(pid: int) -> None:
    for _ in range(500):
        if reaper._state(pid) == "Z":
            return
        time.sleep(0.01)
    raise AssertionError(f"{pid} never exited")


@pytest.mark.parametrize("listing", ["children files", "process table"])
def test_reaps_zombies_but_not_managed_children(
    listing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if listing == "process table":
        # A kernel without /proc/<pid>/task/<tid>/children.
        monkeypatch.setattr(reaper, "_own_children", lambda: None)
    orphan, managed = _spawn_exiting(), _spawn_exiting()
    MANAGED_PIDS.add(managed)
    try:
        _until_zombie(orphan)
        _until_zombie(managed)
        reaped = reap_orphans()
        assert orphan in reaped
        assert managed not in reaped
        with pytest.raises(ChildProcessError):
            os.waitpid(orphan, os.WNOHANG)
        assert reaper._state(managed) == "Z"  # left to its owner
    finally:
        MANAGED_PIDS.discard(managed)
        os.waitpid(managed, 0)


def test_own_children_lists_a_child() -> None:
    pid = _spawn_exiting()
    try:
        children = reaper._own_children()
        assert children is not None
        assert pid in children
    finally:
        os.waitpid(pid, 0)
