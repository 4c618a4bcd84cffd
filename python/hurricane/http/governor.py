"""--threads auto: whether a worker's app should run on a pool of threads, and how large.

Why measure instead of picking a count: a Django view that waits on PostgreSQL (an insert's commit,
a connection per request at ``CONN_MAX_AGE=0``) leaves a single-threaded worker idle for the wait,
which a pool fills with other requests (1.5-2x here), while a view that only computes loses some of
its rate to the hand-off a pool costs per request (a Django JSON view 7 %, a hello world a third).
Which one a worker serves shows in its requests: the time a request's thread spent off the CPU,
against what a hand-off to a thread costs.

The server times at most one request per ``SAMPLE_INTERVAL_S`` (the thread's CPU clock and its count
of voluntary context switches read on each side of the app call: two system calls each) and hands
the numbers to ``Governor.sample``: every request of a view that takes a millisecond, one in 80 of a
hello world, whose 11 us a sample per request would cost 9 %. Only a request whose thread blocked
(a voluntary switch: a socket read, a sleep) counts its time off the CPU as waiting: a thread that
was preempted, or whose virtual CPU the hypervisor took away (steal time, which the guest's thread
clock leaves out), was off the CPU too, but a pool would not give that time back. On a busy shared
machine that was a third of a hello world's wall time, enough to start a pool for an app that only
computes. This module is pure (no clock, no threads, no I/O), so its
rules are tested with made-up samples. The switch is one way: once on a pool, the samples would
count the wait for the GIL as waiting too, and could no longer tell the app's own waits apart.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import List, Tuple

# The loop times the first request to start this long after the last one it timed.
SAMPLE_INTERVAL_S = 0.001
# Samples ignored at first: the first requests import lazily and open the first connections.
WARMUP_SAMPLES = 8
# Samples per window; the median of a window decides, so a rare slow request (a GC pause, a
# cache miss, a CPU-throttled moment) does not sway it, but waits in most requests do. Two windows in
# a row must agree: a window can be as short as 32 ms, which a burst of something else can fill.
WINDOW_SAMPLES = 32
# What handing a request to a thread and back costs the worker, in CPU seconds: measured with a
# Django JSON view, 74 us of CPU a request on the loop against 89-93 on a pool of 4 (a hello world:
# 5.3 us; before threads gave connections back themselves, http/threads.py, 24 us and 15 us). On
# session 20's machine the same pool cost 33 us (89 -> 122), most of it the clients' wakeups of
# responses sent one by one; since a CPU-bound pool sends them in bursts (threads.PoolOutbox) it
# costs 6 us there (87 -> 93; docs/PERFORMANCE.md, session 21). Kept at 15 us: a high estimate now,
# so an app whose waits barely pay for a pool stays on the loop; a view without waits never moves.
HANDOFF_S = 15e-6
# A pool is started when the median sampled request would run this much faster on one: its wall
# time over its CPU time plus the hand-off. A Django view reading PostgreSQL at CONN_MAX_AGE=600
# (800 us of CPU, 200 us of waiting: 1.22) gains; a Django view without I/O (180 us, nothing off the
# CPU: 0.9) or a hello world (0.3) would lose.
MIN_GAIN = 1.1
# A pool keeps the worker's CPU busy twice over: with a share w off the CPU, 1 / (1 - w) requests in
# flight keep one CPU busy; twice that absorbs uneven waits. Bounded: beyond it, set --threads.
MAX_THREADS = 32


class Phase(Enum):
    """Where a governor is: forward only, but for LEANING, which a window without the gain undoes."""

    WARMING = "warming"  # skipping the first samples
    WATCHING = "watching"  # filling windows, deciding at the end of each
    LEANING = "leaning"  # the last window had the gain: a second one in a row starts the pool
    POOLED = "pooled"  # a pool was started: nothing more to decide


class Governor:
    """Decides, from sampled requests, when the app moves to a pool and of how many threads."""

    def __init__(self, warmup: int = WARMUP_SAMPLES, window: int = WINDOW_SAMPLES,
                 handoff: float = HANDOFF_S, min_gain: float = MIN_GAIN, max_threads: int = MAX_THREADS) -> None:
        self.warmup = warmup
        self.window = window
        self.handoff = handoff
        self.min_gain = min_gain
        self.max_threads = max_threads
        self.phase = Phase.WARMING if warmup > 0 else Phase.WATCHING
        self.skipped = 0
        self.samples: List[Tuple[float, float]] = []  # (gain on a pool, share off the CPU)
        self.gain = 0.0  # the median sample's gain in the last full window
        self.share = 0.0  # and its share of wall time off the CPU
        self.threads = 1

    def sample(self, wall: float, cpu: float, blocked: int) -> int:
        """One request's wall-clock and thread-CPU seconds and how often its thread blocked (its
        voluntary context switches). Returns the pool size to start now, or 0."""
        phase = self.phase
        if phase is Phase.POOLED:
            return 0
        if phase is Phase.WARMING:
            self.skipped += 1
            if self.skipped >= self.warmup:
                self.phase = Phase.WATCHING
            return 0
        # Off the CPU without blocking: preempted or stolen, not waiting (see the module's doc).
        cpu = min(max(cpu, 0.0), wall) if blocked > 0 else wall
        share = 1.0 - cpu / wall if wall > 0.0 else 0.0
        self.samples.append((wall / (cpu + self.handoff), share))
        if len(self.samples) < self.window:
            return 0
        samples = sorted(self.samples)
        self.samples = []
        self.gain, self.share = samples[len(samples) // 2]
        if self.gain < self.min_gain:
            self.phase = Phase.WATCHING
            return 0
        if phase is Phase.WATCHING:
            self.phase = Phase.LEANING
            return 0
        self.phase = Phase.POOLED
        self.threads = self.pool_size(self.share)
        return self.threads

    def pool_size(self, share: float) -> int:
        """Threads for an app whose requests spend ``share`` of their time off the CPU."""
        if share >= 1.0:
            return self.max_threads
        return min(self.max_threads, max(2, math.ceil(2.0 / (1.0 - share))))
