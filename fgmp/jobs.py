"""Independent steps side by side. The slow steps of the project (simulator builds and runs, Yosys,
nextpnr) are subprocesses, so threads keep every core busy. Only the thread that created a pool waits on
its futures; steps wait on each other only through locks held by running steps (a model being built),
so a step never waits on one still queued."""

import itertools
import os
import queue
import threading
from concurrent.futures import Executor, Future

__all__ = ["Inline", "StepPool", "default_jobs", "check_jobs", "step_pool", "torch_threads_beside"]


def _run_into(future, fn, args, kwargs):
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as error:  # handed to whoever calls result()
        future.set_exception(error)


class Inline(Executor):
    """Runs each step at once in the calling thread: the sequential case with the same interface."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        _run_into(future, fn, args, kwargs)
        return future

    def defer(self, fn, /, *args, **kwargs):
        return self.submit(fn, *args, **kwargs)


class StepPool(Executor):
    """``jobs`` threads running steps: those of ``submit`` in submission order, and those of ``defer`` only
    when no submitted step waits (a long batch of independent checks yields to the steps that a result
    is waiting for)."""

    _URGENT, _DEFERRED = 0, 1

    def __init__(self, jobs):
        self._queue = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"fgmp-step-{n}", daemon=True)
                         for n in range(check_jobs(jobs))]
        for thread in self._threads:
            thread.start()

    def _put(self, priority, fn, args, kwargs):
        future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit a step to a pool that was shut down")
            self._queue.put((priority, next(self._order), future, fn, args, kwargs))
        return future

    def submit(self, fn, /, *args, **kwargs):
        return self._put(self._URGENT, fn, args, kwargs)

    def defer(self, fn, /, *args, **kwargs):
        return self._put(self._DEFERRED, fn, args, kwargs)

    def _work(self):
        while True:
            _, _, future, fn, args, kwargs = self._queue.get()
            if future is None:
                return
            _run_into(future, fn, args, kwargs)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    while True:
                        try:
                            item = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        item[2].cancel()
                for _ in self._threads:  # after every waiting step: the stop marks sort last
                    self._queue.put((self._DEFERRED + 1, next(self._order), None, None, None, None))
        if wait:
            for thread in self._threads:
                thread.join()


def default_jobs():
    """Steps at once by default: every core, at most 4 (no command here has more independent steps)."""
    return max(1, min(os.cpu_count() or 1, 4))


def check_jobs(jobs):
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise TypeError(f"--jobs must be an integer, not {jobs!r}")
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, not {jobs}")
    return jobs


def step_pool(jobs):
    """An executor running ``jobs`` steps at once (Inline for one), with ``defer`` for background steps."""
    return Inline() if check_jobs(jobs) == 1 else StepPool(jobs)


def torch_threads_beside(jobs):
    """Threads left for torch in this process while ``jobs`` steps run beside it: oversubscribed cores
    make torch's OpenMP workers spin and run several times slower (docs/policy.md §10)."""
    import torch

    threads = max(1, (os.cpu_count() or 1) - check_jobs(jobs) + 1) if jobs > 1 else torch.get_num_threads()
    return min(threads, torch.get_num_threads())
