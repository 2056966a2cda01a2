"""SQLite's writers queue on a file lock across processes (farm.db.writer_queue): one holder at a
time, also between forked children using the queue object their parent opened."""

from __future__ import annotations

import multiprocessing
import time

from farm.db.writer_queue import WriterQueue


def _hold_then_record(queue: WriterQueue, hold: float, log) -> None:
    with queue:
        log.put(("in", time.monotonic()))
        time.sleep(hold)
        log.put(("out", time.monotonic()))


def test_processes_hold_the_queue_one_at_a_time(tmp_path):
    database = tmp_path / "farm.db"
    parent = WriterQueue(database)
    with parent:
        pass  # its file opened before forking: sharing it, the children would share one lock
    context = multiprocessing.get_context("fork")
    log = context.Queue()
    children = [context.Process(target=_hold_then_record, args=(parent, 0.2, log)) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(20)
        assert child.exitcode == 0
    events = sorted((log.get(timeout=5) for _ in range(6)), key=lambda event: event[1])
    assert [kind for kind, _ in events] == ["in", "out"] * 3  # never two inside at once


def test_threads_of_one_process_queue_too(tmp_path):
    import threading

    queue, inside, most = WriterQueue(tmp_path / "farm.db"), [0], [0]

    def write() -> None:
        for _ in range(50):
            with queue:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                inside[0] -= 1

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert most[0] == 1


def test_an_in_memory_database_queues_threads_only():
    queue = WriterQueue(None)
    with queue:
        pass
    queue.close()
