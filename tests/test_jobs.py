"""fgmp.jobs: steps side by side, background steps after the urgent ones, errors and cancellation."""

import threading

import pytest

from fgmp.jobs import Inline, StepPool, check_jobs, step_pool, torch_threads_beside


def test_deferred_steps_wait_for_every_submitted_step():
    order, gate = [], threading.Event()
    with StepPool(1) as pool:
        blocker = pool.submit(gate.wait)  # holds the only worker while the queue fills
        later = [pool.defer(order.append, f"deferred {n}") for n in range(2)]
        sooner = [pool.submit(order.append, f"urgent {n}") for n in range(2)]
        gate.set()
        for future in [blocker, *later, *sooner]:
            future.result()
    assert order == ["urgent 0", "urgent 1", "deferred 0", "deferred 1"]


def test_a_failed_step_raises_where_its_result_is_taken():
    with StepPool(2) as pool:
        future = pool.submit(int, "not a number")
        assert pool.submit(sum, [1, 2]).result() == 3
        with pytest.raises(ValueError, match="invalid literal"):
            future.result()


def test_shutdown_cancels_the_queued_steps_and_refuses_new_ones():
    started, gate = threading.Event(), threading.Event()
    pool = StepPool(1)
    running = pool.submit(lambda: started.set() or gate.wait())
    started.wait()
    queued = pool.defer(print, "never")
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert running.result() is True and queued.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(print)


def test_one_job_runs_each_step_at_once_in_the_caller():
    pool = step_pool(1)
    assert isinstance(pool, Inline)
    assert pool.defer(threading.get_ident).result() == threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result()


@pytest.mark.parametrize("jobs, error, message", [
    (0, ValueError, "--jobs must be at least 1, not 0"), (-1, ValueError, "--jobs must be at least 1, not -1"),
    (1.5, TypeError, "--jobs must be an integer, not 1.5"), (True, TypeError, "--jobs must be an integer, not True"),
    ("2", TypeError, "--jobs must be an integer, not '2'"),
])
def test_jobs_must_be_a_positive_integer(jobs, error, message):
    with pytest.raises(error) as info:
        check_jobs(jobs)
    assert str(info.value) == message


def test_torch_keeps_at_least_one_thread_beside_the_steps():
    assert torch_threads_beside(64) == 1
