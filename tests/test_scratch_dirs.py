"""Scratch directories made ahead and removed in batches (http_front.conversation.scratch)."""

from __future__ import annotations

from pathlib import Path

import trio

from http_front.conversation.scratch import ScratchDirs
from tests.helpers import eventually

TIMEOUT_S = 30


def entries(root: Path) -> set[Path]:
    return set(root.iterdir()) if root.exists() else set()


async def test_without_the_background_task_each_is_made_and_removed_at_once(
    tmp_path: Path,
) -> None:
    dirs = ScratchDirs(tmp_path / "scratch")
    first, second = dirs.take(), dirs.take()
    assert first != second
    assert first.is_dir()
    assert not any(first.iterdir())
    (first / "made-by-a-command").write_text("x")
    await dirs.give_back(first)
    assert entries(tmp_path / "scratch") == {second}


async def test_a_stock_is_kept_and_what_is_given_back_goes_in_one_round(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    # Real time: the rounds run in a worker thread, which a mock clock would
    # jump over.
    dirs = ScratchDirs(root, stock=4, batch_s=0.2)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(dirs.run)
            assert dirs.ready == 4
            stock = entries(root)
            taken = [dirs.take() for _ in range(6)]  # four from the stock, two made now
            assert set(taken[:4]) == stock
            assert all(path.is_dir() for path in taken)
            assert len(set(taken)) == 6
            for path in taken:
                (path / "file").write_text("output")
                await dirs.give_back(path)
            # Not removed on the request's path...
            assert all(path.exists() for path in taken)
            assert dirs.to_remove == 6
            # ...but in the next round, which also refills the stock.
            await eventually(lambda: not any(path.exists() for path in taken))
            await eventually(lambda: dirs.ready == 4)
            assert dirs.to_remove == 0
            assert len(entries(root)) == 4
            kept = dirs.take()
            await dirs.give_back(dirs.take())
            nursery.cancel_scope.cancel()
    # Stopping removes the stock and what was given back; a directory still
    # taken is its holder's to give back.
    assert entries(root) == {kept}
    await dirs.give_back(kept)
    assert entries(root) == set()


async def test_a_root_that_cannot_be_made_is_reported_by_take(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    dirs = ScratchDirs(blocker / "scratch", stock=2)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(dirs.run)  # logs, and makes none ahead
            assert dirs.ready == 0
            try:
                dirs.take()
            except NotADirectoryError:
                pass
            else:
                raise AssertionError("take() made a directory under a file")
            nursery.cancel_scope.cancel()
