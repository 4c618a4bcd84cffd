"""What this process's cgroup lets it use: its CPU quota (a Kubernetes pod's ``limits.cpu``).

Why: a pool's outbox holds responses only while the worker is CPU-bound (http/threads.py), which it
tells from the CPU time the worker used over a window of wall time. Under a quota of half a CPU a
saturated worker uses half a CPU of each second, and that must count as bound too.

Read once, when a pool starts: cgroup v2's ``cpu.max`` or v1's ``cpu.cfs_quota_us`` over
``cpu.cfs_period_us``, in the process's own cgroup and every one above it up to the mount, and at
the mount itself (a container sees its own cgroup there); the least quota wins. Nothing readable:
no quota.
"""

from __future__ import annotations

import math
import os
from typing import List


def cpu_quota(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> float:
    """The CPUs this process may use over time, or math.inf without a quota."""
    limit = math.inf
    for directory in _cpu_dirs(root, proc):
        limit = min(limit, _quota_in(directory))
    return limit


def _cpu_dirs(root: str, proc: str) -> List[str]:
    """The cpu controller's directories that limit this process, its own cgroup's first."""
    try:
        with open(proc) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    dirs: List[str] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            mounts = [root, os.path.join(root, "unified")]  # v2, or v2 beside v1 (hybrid)
        elif "cpu" in controllers.split(","):
            mounts = [os.path.join(root, controllers)]  # v1: the mount is named for its controllers
        else:
            continue
        for mount in mounts:
            directory = os.path.normpath(mount + "/" + path.strip("/"))
            while len(directory) > len(mount):
                dirs.append(directory)
                directory = os.path.dirname(directory)
            dirs.append(mount)
    return dirs


def _quota_in(directory: str) -> float:
    """One cgroup's quota in CPUs (v2's file first, then v1's); math.inf if it sets none."""
    try:
        with open(os.path.join(directory, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        if quota == "max" or int(period) <= 0:
            return math.inf
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(directory, "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(directory, "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
        return math.inf if quota_us < 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return math.inf
