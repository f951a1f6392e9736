"""Independent steps side by side. The slow steps of the project (simulator builds and runs, Yosys,
nextpnr) are subprocesses, so threads keep every core busy; only the thread that created the pool waits
on its futures, so a step never waits on a step queued behind it."""

import os
from concurrent.futures import Executor, Future, ThreadPoolExecutor

__all__ = ["Inline", "default_jobs", "check_jobs", "step_pool", "torch_threads_beside"]


class Inline(Executor):
    """Runs each step at once in the calling thread: the sequential case with the same interface."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to whoever calls result(), as a pool would
            future.set_exception(error)
        return future


def default_jobs():
    """Steps at once by default: every core, at most 4 (no command here has more independent steps)."""
    return max(1, min(os.cpu_count() or 1, 4))


def check_jobs(jobs):
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be at least 1, not {jobs}")
    return jobs


def step_pool(jobs):
    """An executor running ``jobs`` steps at once (Inline for one)."""
    return Inline() if check_jobs(jobs) == 1 else ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="fgmp")


def torch_threads_beside(jobs):
    """Threads left for torch in this process while ``jobs`` steps run beside it: oversubscribed cores
    make torch's OpenMP workers spin and run several times slower (docs/policy.md §10)."""
    import torch

    threads = max(1, (os.cpu_count() or 1) - check_jobs(jobs) + 1) if jobs > 1 else torch.get_num_threads()
    return min(threads, torch.get_num_threads())
