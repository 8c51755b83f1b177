"""Threads per call (``runtime/threads.py``): all cores while they are free, one while the
machine is so busy that one thread is faster; the same results either way."""

import numpy as np

import minicomp
from minicomp.runtime.threads import PROBE_EVERY, PROBE_EVERY_MAX, ThreadChoice
from minicomp.testing import assert_close


def run(choice: ThreadChoice, calls: int, parallel_s: float, serial_s: float) -> list[bool]:
    """Drive ``choice`` with calls that take ``parallel_s`` on all threads and ``serial_s`` on one."""
    ways = []
    for _ in range(calls):
        parallel = choice.next_call()
        choice.record(parallel, parallel_s if parallel else serial_s)
        ways.append(parallel)
    return ways


def test_idle_machine_runs_parallel_but_for_rare_probes():
    choice = ThreadChoice()
    ways = run(choice, 20 * PROBE_EVERY, parallel_s=1.0, serial_s=1.9)
    assert not ways[PROBE_EVERY - 1]                       # the first probe, after PROBE_EVERY calls
    assert 3 <= ways.count(False) <= 20 * PROBE_EVERY // PROBE_EVERY_MAX + 3   # then rarer and rarer
    assert ways[-PROBE_EVERY_MAX:].count(False) <= 1


def test_busy_machine_switches_to_one_thread_and_back():
    choice = ThreadChoice()
    run(choice, 3 * PROBE_EVERY, parallel_s=1.0, serial_s=1.9)             # idle
    busy = run(choice, 10 * PROBE_EVERY, parallel_s=6.0, serial_s=1.9)      # a core is taken
    assert busy[:2] == [True] * 2 and not any(busy[2:PROBE_EVERY])          # one thread after 2 calls
    assert busy[PROBE_EVERY:].count(True) <= 9 * PROBE_EVERY // PROBE_EVERY_MAX + 2  # rare probes
    idle_again = run(choice, 3 * PROBE_EVERY_MAX, parallel_s=1.0, serial_s=1.9)
    back = idle_again.index(True)
    assert back < PROBE_EVERY_MAX and all(idle_again[back:back + PROBE_EVERY - 1])   # after one probe


def test_either_way_gives_the_same_results():
    """A kernel with parallel loops, called often enough that both ways run: equal results,
    and the executable timed both."""
    x = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    f = minicomp.jit(lambda x: np.tanh(x) * 2 + x.sum(axis=0))
    executable = f.compiled_for(x).run
    assert executable._threads is not None
    first = f(x)
    for _ in range(2 * PROBE_EVERY):
        np.testing.assert_array_equal(f(x), first)
    assert executable._threads.estimate[True] is not None and executable._threads.estimate[False] is not None
    assert_close(first, np.tanh(x) * 2 + x.sum(axis=0))


def test_a_program_without_parallel_loops_is_not_timed():
    x = np.ones((3, 4), np.float32)
    assert minicomp.jit(lambda x: x + 1).compiled_for(x).run._threads is None


def test_short_calls_probe_by_time_too():
    """Calls of 1 ms: once the choice is confirmed, a probe comes only after 0.5 s of calls
    (so on a busy machine the slow probes stay far below one call in ten)."""
    from minicomp.runtime.threads import PROBE_SECONDS

    choice = ThreadChoice()
    ways = run(choice, 5000, parallel_s=0.006, serial_s=0.001)  # busy: one thread is faster
    steady = ways[1000:]
    assert 0 < steady.count(True) <= len(steady) * 0.001 / PROBE_SECONDS + 1


def test_often_fast_but_often_slow_loses_to_steady():
    """Under load, all cores take 1.2 ms three calls in four and 4.5 ms in the fourth (median
    1.2 ms); one thread takes 2.2 ms every time. One thread wins: the 90th percentile counts."""
    choice = ThreadChoice()
    ways = []
    for i in range(4000):
        parallel = choice.next_call()
        choice.record(parallel, (0.0045 if i % 4 == 3 else 0.0012) if parallel else 0.0022)
        ways.append(parallel)
    assert ways[1000:].count(True) < 0.05 * 3000
