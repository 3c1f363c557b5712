"""The daemon executor: jobs run one at a time in order, errors reach the caller, and a shutdown that
times out leaves a running job to the exit (a daemon thread) instead of waiting for it."""

from __future__ import annotations

import threading
import time

import pytest

from server.threads import DaemonExecutor


def test_jobs_run_in_order_and_errors_reach_the_caller():
    executor = DaemonExecutor("test")
    seen = []
    futures = [executor.submit(seen.append, i) for i in range(5)]
    assert [f.result(5) for f in futures] == [None] * 5 and seen == [0, 1, 2, 3, 4]
    with pytest.raises(ZeroDivisionError):
        executor.submit(lambda: 1 / 0).result(5)
    assert executor.shutdown(timeout=5)
    with pytest.raises(RuntimeError):
        executor.submit(print)


def test_a_shutdown_that_times_out_abandons_the_running_job():
    executor = DaemonExecutor("test")
    release = threading.Event()
    running = executor.submit(release.wait, 30)
    queued = executor.submit(time.sleep, 0)
    while executor.running is None:
        time.sleep(0.01)
    assert executor._thread.daemon and "wait" in executor.running
    assert executor.shutdown(cancel_futures=True, timeout=0.2) is False  # still running: abandoned
    assert queued.cancelled() and not running.done()
    release.set()
    assert running.result(5) is True
