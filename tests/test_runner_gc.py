"""The runner keeps the heap that exists when its loop starts out of full collections."""

from __future__ import annotations

import gc
import threading

from monitor.runtime import runner


def test_the_heap_is_frozen_while_runners_loop_and_handed_back_after() -> None:
    assert gc.get_freeze_count() == 0
    with runner._frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with runner._frozen_heap():  # a second runner (another replica in one process)
            assert gc.get_freeze_count() >= frozen
        assert gc.get_freeze_count() > 0  # the first one still loops
    assert gc.get_freeze_count() == 0


def test_runners_in_threads_unfreeze_once_the_last_stops() -> None:
    inside = threading.Barrier(3)
    done = threading.Event()

    def loop() -> None:
        with runner._frozen_heap():
            inside.wait(timeout=10)
            done.wait(timeout=10)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait(timeout=10)
    assert gc.get_freeze_count() > 0
    done.set()
    for t in threads:
        t.join(timeout=10)
    assert gc.get_freeze_count() == 0


def test_garbage_made_while_frozen_is_still_collected() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    with runner._frozen_heap():
        Node()  # a reference cycle made after the freeze
        assert gc.collect() > 0
