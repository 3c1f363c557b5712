"""A one-thread executor whose worker is a daemon thread. A ThreadPoolExecutor's workers are joined at
interpreter exit, so a signal during a long model load (a GGUF conversion, a large checkpoint) would keep
the process alive until the load ends; a daemon worker's job is abandoned instead, and the process ends
within seconds. Jobs run one at a time, in order (the torch backend relies on that to serialise installs
against forwards)."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Executor, Future


class DaemonExecutor(Executor):
    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._lock = threading.Lock()
        self._closed = False
        self.running: str | None = None  # what the worker is doing now (for shutdown logs)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            if not self._thread.is_alive():
                self._thread.start()
            self._jobs.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            self.running = getattr(fn, "__qualname__", repr(fn))
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - the caller gets it through the future
                future.set_exception(exc)
            finally:
                self.running = None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None) -> bool:
        """Stop taking work; with `wait`, wait for the job running now (at most `timeout` seconds). True when
        the worker is done, False when it is still running (a daemon: exit will not wait for it)."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        job[0].cancel()
            self._jobs.put(None)
        if wait and self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()
