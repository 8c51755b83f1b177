"""How many threads a call uses: all cores while they are free, one while the machine is busy.

A parallel loop ends at a barrier that waits for every thread of its team. When another
program keeps a core busy, the thread that shares that core runs in the other program's time
slices, and each loop waits for it: on a 2-core machine with one core busy, softmax [4096,
1024] went from 2.6 ms to 15.7 ms (``minicomp bench --under-load``), more than on one thread.

The usual cures did not hold up when measured on the 2-core development VM:

* a *passive* wait policy (``OMP_WAIT_POLICY=passive``: threads sleep between loops) makes
  the kernel scheduler favour minicomp's threads under load, but every sleep and wake-up costs
  about 50 us there: six loops of 256K elements took 795 us instead of 460 us, slower than one
  thread (667 us); conv_bn_relu went from 1.9 to 3.4 ms on an idle machine;
* a short spin (``GOMP_SPINCOUNT=1000``) costs about 70 us per loop after a pause;
* dynamic scheduling (``mc_chunk``) balances the work but not the barrier's wait.

So each executable chooses per call, from its own timings (``ThreadChoice``): it runs its
loops on all cores (OpenMP's default: fast spinning threads) unless its recent calls on one
thread were faster, which happens only while the machine is busy. Now and then a call runs
the other way (a *probe*: after ``PROBE_EVERY`` calls; then, while probes keep confirming the
choice, half as often, down to one in ``PROBE_EVERY_MAX`` calls that also took
``PROBE_SECONDS``, since a probe on a busy machine is a slow call). So the choice follows the
load as it comes and goes: it switches to one thread after two slow calls, and back after
one fast probe. On an idle machine that costs at most one call in 64 on one thread: medians
and 90th percentiles are untouched.
"""

from __future__ import annotations

PROBE_EVERY = 16   # calls between runs the other way (at first, and after the choice changed)
PROBE_EVERY_MAX = 64  # ... up to this many while probes keep confirming the choice,
PROBE_SECONDS = 0.5   # ... and then also this much time spent in calls since the last probe
WINDOW = 5         # recent timings kept per way (the second slowest is the estimate)


class ThreadChoice:
    """Per-executable choice of all threads (``parallel``) or one, by recent call times.

    >>> choice = ThreadChoice()
    >>> parallel = choice.next_call()      # True or False
    >>> choice.record(parallel, seconds)   # after the call
    """

    def __init__(self):
        self.recent: dict[bool, list[float]] = {True: [], False: []}
        self.estimate: dict[bool, float | None] = {True: None, False: None}
        self.calls = 0          # since the last probe or change
        self.spent = 0.0        # seconds spent in those calls
        self.probe_every = PROBE_EVERY
        self.probing = False    # whether the current call runs the other way

    def best(self) -> bool:
        """The way with the lower estimate; parallel until one thread has been timed."""
        serial, parallel = self.estimate[False], self.estimate[True]
        return serial is None or parallel is None or parallel <= serial

    def next_call(self) -> bool:
        """Whether the next call should use all threads."""
        self.calls += 1
        self.probing = self.calls >= self.probe_every and (
            self.probe_every < PROBE_EVERY_MAX or self.spent >= PROBE_SECONDS)
        return not self.best() if self.probing else self.best()

    def record(self, parallel: bool, seconds: float) -> None:
        """Remember how long the current call took the way it ran.

        A way's estimate is the second slowest of its last ``WINDOW`` calls (the slowest of
        fewer than three), not their median:
        under load, loops on all cores are often as fast as on an idle machine and every few
        calls several times slower (whenever the thread sharing the busy core is off it), so
        their median beats one thread while their 90th percentile is far worse. A probe's time
        replaces what was known of its way (older times describe another load).
        """
        times = self.recent[parallel]
        probe, before = self.probing, self.best()
        self.spent += seconds
        if probe:
            times.clear()
        times.append(seconds)
        del times[:-WINDOW]
        self.estimate[parallel] = sorted(times)[-2] if len(times) >= 3 else max(times)
        if self.best() != before:  # the choice changed: probe soon, to confirm it
            self.probe_every, self.calls, self.spent = PROBE_EVERY, 0, 0.0
        elif probe:  # confirmed: probe half as often, down to PROBE_EVERY_MAX calls and PROBE_SECONDS
            self.probe_every, self.calls, self.spent = min(2 * self.probe_every, PROBE_EVERY_MAX), 0, 0.0
