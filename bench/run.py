#!/usr/bin/env python3
"""Benchmark hurricane against its peers in one run, and print the ratios.

    python3 bench/run.py                 # every scenario, median of 3 runs (about an hour)
    python3 bench/run.py hello close     # only these scenarios
    python3 bench/run.py --check         # the regression gate: the scenarios with floors, checked
    python3 bench/run.py --check hello   # ... only these
    python3 bench/run.py --history       # bench/history.jsonl as a table

Scenarios: hello, close, close-limit (Connection: close at a 0.5 CPU cgroup quota), django,
asgi (10 KB GET), ws (WebSocket echo), channels (a Channels echo consumer), django-asgi (a Django
async view, the sync view under ASGI, and under WSGI), sse (1,000 server-sent-event streams),
static, threads, db (Django ORM views on the local PostgreSQL, psycopg 3, and the read with
psycopg2; or one of them: db-read, db-read-conn0, db-write, db-read-psycopg2), spread, memory,
consume (AMQP against the local RabbitMQ, bench/consume.py).

Sets up the peers itself (gunicorn, granian, pyuwsgi, uvicorn, hypercorn, daphne, Django, Channels,
psycopg, psycopg2 into target/bench-venv; wrk from Debian if missing), builds hurricane and the bench's own
WebSocket and SSE load clients (bench/wsload) in release mode, then for each scenario starts each
server with one worker, pinned to CPU 0, with the load pinned to CPU 1. Prints one markdown table
per scenario (rate, p50, p99, CPU, hurricane / peer), ready for docs/PERFORMANCE.md, and appends the
ratios to bench/history.jsonl. With --check it runs only hurricane and the peers with floors in
bench/floors.json, 5 rounds (BENCH_REPEAT overrides), compares each ratio with its floor and exits
1 when one fell below it by more than the noise margin. The keep-alive scenarios also run
bench/apps/bareloop.py, a bare selectors loop with no HTTP checks at all: the reference for what
pure Python can reach. Only loopback is used; every run is bounded by its duration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "target" / "bench-venv"
APPS = ROOT / "bench" / "apps"
HURRICANE = ROOT / "target" / "release" / "hurricane"
PEERS = ["gunicorn", "granian", "pyuwsgi", "django", "uvicorn[standard]", "websockets", "uvloop", "hypercorn",
         "daphne", "channels", "psycopg[binary]", "psycopg2-binary"]
# The load clients wrk cannot replace (WebSocket echo, many SSE streams): bench/wsload, built here.
WSLOAD_DIR = ROOT / "target" / "wsload"
WSLOAD = WSLOAD_DIR / "release" / "wsload"
SSELOAD = WSLOAD_DIR / "release" / "sseload"
# Every ASGI server of the table, 1 worker each.
ASGI_SERVERS = ["hurricane", "uvicorn httptools+uvloop", "uvicorn h11+asyncio", "granian asgi", "gunicorn asgi",
                "hypercorn", "daphne"]
DURATION_S = int(os.environ.get("BENCH_SECONDS", "8"))
# Single runs on a shared 2-core machine swing by 10-20 %: each server runs this many times,
# interleaved with the others, and the median run is reported.
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
# --check runs only hurricane and the peers with floors, so it affords more rounds in less time.
GATE_REPEAT = 5
SERVER_CPU, LOAD_CPU = "0", "1"
# The close-limit scenario's CPU quota per 100 ms: half a CPU, a common `limits.cpu: 500m`.
POD_CPU_QUOTA_US = 50_000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def setup() -> None:
    # The venv is keyed by the list of what it holds: a peer added to PEERS is installed next run.
    marker = VENV / "bench-peers.txt"
    wanted = "\n".join(PEERS)
    if not marker.exists() or marker.read_text() != wanted:
        log(f"setting up {VENV} with {', '.join(PEERS)}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", *PEERS], check=True)
        marker.write_text(wanted)
    if shutil.which("wrk") is None:
        log("installing wrk (Debian)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    log("building hurricane and the bench's load clients (release)")
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "--target-dir", str(WSLOAD_DIR)],
                   cwd=ROOT / "bench" / "wsload", check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer {path} within {timeout_s}s")


def server_command(name: str, app: str, port: int, workers: int, extra: Dict[str, str]) -> List[str]:
    bind = f"127.0.0.1:{port}"
    venv = VENV / "bin"
    if name == "hurricane":
        interface = "--asgi" if extra.get("asgi") else "-w"
        cmd = [str(HURRICANE), interface, extra.get("app", app), "--bind", "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--no-probe", "--python", str(venv / "python"), "--log-level", "warn"]
        if "threads" in extra:
            cmd += ["--threads", extra["threads"]]
        if "static" in extra:
            cmd += ["--static-root", extra["static"]]
        return cmd
    if name == "hurricane --preload":
        return server_command("hurricane", app, port, workers, extra) + ["--preload"]
    if name == "gunicorn sync":
        return [str(venv / "gunicorn"), "-w", str(workers), "-b", bind, "--log-level", "warning", app]
    if name == "gunicorn --preload":
        return server_command("gunicorn sync", app, port, workers, extra) + ["--preload"]
    if name == "gunicorn gthread":
        return [str(venv / "gunicorn"), "-w", str(workers), "-k", "gthread", "--threads", extra.get("threads", "8"),
                "-b", bind, "--log-level", "warning", app]
    if name == "uWSGI":
        module, _, attr = app.partition(":")
        return [str(venv / "uwsgi"), "--http-socket", bind, "--module", f"{module}:{attr or 'application'}",
                "--master", "--processes", str(workers), "--http-keepalive", "--disable-logging",
                "--die-on-term", "--need-app"]
    if name == "granian":
        cmd = [str(venv / "granian"), "--interface", "wsgi", "--workers", str(workers), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", app if ":" in app else app + ":application"]
        if "static" in extra:
            cmd += ["--static-path-route", "/static", "--static-path-mount", extra["static"]]
        if "blocking_threads" in extra:
            cmd += ["--blocking-threads", extra["blocking_threads"]]
        return cmd
    if name == "uvicorn httptools+uvloop":
        return [str(venv / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                "--http", "httptools", "--loop", "uvloop", "--log-level", "warning", "--no-access-log"]
    if name == "uvicorn h11+asyncio":
        return [str(venv / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                "--http", "h11", "--loop", "asyncio", "--log-level", "warning", "--no-access-log"]
    if name == "granian asgi":
        return [str(venv / "granian"), "--interface", "asgi", "--workers", str(workers), "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "warning", app if ":" in app else app + ":application"]
    if name == "gunicorn asgi":
        return [str(venv / "gunicorn"), "-w", str(workers), "-k", "asgi", "-b", bind, "--log-level", "warning",
                app if ":" in app else app + ":application"]
    if name == "hypercorn":
        return [str(venv / "hypercorn"), "-w", str(workers), "-b", bind, "--log-level", "warning",
                app if ":" in app else app + ":application"]
    if name == "daphne":
        return [str(venv / "daphne"), "-b", "127.0.0.1", "-p", str(port), "-v", "0",
                app if ":" in app else app + ":application"]
    if name == "bare loop":
        return [str(venv / "python"), str(APPS / "bareloop.py"), app, str(port)]
    raise ValueError(name)


def parse_wrk(out: str) -> Tuple[float, str, str, int]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return rps, p50.group(1) if p50 else "?", p99.group(1) if p99 else "?", errors


def stop(proc: subprocess.Popen) -> None:
    """TERM the server's session, KILL it if it takes more than 15 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cpu_seconds(pids: List[int]) -> float:
    """User + system CPU time of these processes so far (their threads included)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_busy(cpu: str) -> Tuple[int, int]:
    """(busy, total) clock ticks of one CPU so far, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(n) for n in line.split()[1:]]
                return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # idle and iowait are not busy
    return 0, 0


class CpuLimit:
    """A cgroup whose CFS quota caps the server's CPU time, as a Kubernetes `limits.cpu` does.

    Why: with `Connection: close` wrk connects once per request, and on a 2-core machine its own
    CPU is then the limit for any fast server (req/s converge on wrk's ceiling). Under a quota
    every server is the bottleneck again, and req/s says what each serves with the CPU it has.
    """

    def __init__(self, quota_us: int) -> None:
        self.quota_us = quota_us
        name = f"hurricane-bench-{os.getpid()}"
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.dir = v1 / name
            self.dir.mkdir(exist_ok=True)
            (self.dir / "cpu.cfs_period_us").write_text("100000")
            (self.dir / "cpu.cfs_quota_us").write_text(str(quota_us))
        else:
            root = Path("/sys/fs/cgroup")
            if "cpu" not in (root / "cgroup.subtree_control").read_text().split():
                (root / "cgroup.subtree_control").write_text("+cpu")
            self.dir = root / name
            self.dir.mkdir(exist_ok=True)
            (self.dir / "cpu.max").write_text(f"{quota_us} 100000")

    def wrap(self, cmd: List[str]) -> List[str]:
        """`cmd`, started inside the cgroup (its children stay in it)."""
        return ["sh", "-c", f'echo $$ > {self.dir / "cgroup.procs"} && exec "$@"', "sh", *cmd]

    def remove(self) -> None:
        try:
            self.dir.rmdir()
        except OSError:
            pass


# A load: given the server's port and the run's length, (rate, p50, p99, errors).
Load = Callable[[int, int], Tuple[float, str, str, int]]


def wrk_load(path: str, wrk_args: List[str] = ()) -> Load:
    def run(port: int, seconds: int) -> Tuple[float, str, str, int]:
        out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c50", f"-d{seconds}s", "--latency",
                              *wrk_args, f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True, check=True).stdout
        return parse_wrk(out)
    return run


def ws_load(path: str, connections: int = 32, size: int = 64) -> Load:
    """WebSocket echo: `connections` clients each sending a `size`-byte text and awaiting its echo."""
    def run(port: int, seconds: int) -> Tuple[float, str, str, int]:
        out = subprocess.run(["taskset", "-c", LOAD_CPU, str(WSLOAD), f"ws://127.0.0.1:{port}{path}",
                              str(connections), str(seconds), str(size)],
                             capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
        return parse_fields(out, "rate", "p50_us", "p99_us", "us")
    return run


def sse_load(path: str, streams: int) -> Load:
    """`streams` concurrent server-sent-event streams; the rate is events received per second."""
    def run(port: int, seconds: int) -> Tuple[float, str, str, int]:
        out = subprocess.run(["taskset", "-c", LOAD_CPU, str(SSELOAD), f"127.0.0.1:{port}", path, str(streams),
                              str(seconds)], capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
        rate, p50, p99, errors = parse_fields(out, "rate", "lag_p50_ms", "lag_p99_ms", "ms")
        if f"streams={streams} " not in out:
            errors += 1
        return rate, p50, p99, errors
    return run


def parse_fields(out: str, rate: str, p50: str, p99: str, unit: str) -> Tuple[float, str, str, int]:
    fields = dict(kv.split("=", 1) for kv in out.split())
    return (float(fields[rate]), fields[p50] + unit, fields[p99] + unit, int(fields.get("errors", "0")))


def run_one(name: str, app: str, ready: str, workers: int, load: Load, extra: Dict[str, str],
            env_extra: Dict[str, str], limit: Optional[CpuLimit] = None
            ) -> Optional[Tuple[float, str, str, int, float, float]]:
    """(rate, p50, p99, errors, server CPU microseconds per request or message, the load's CPU busy %)
    of one measured run."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(APPS), **env_extra)
    env.pop("VIRTUAL_ENV", None)
    cmd = ["taskset", "-c", SERVER_CPU, *server_command(name, app, port, workers, extra)]
    if limit is not None:
        cmd = limit.wrap(cmd)
    with tempfile.TemporaryFile() as logf:
        proc = subprocess.Popen(cmd, cwd=APPS, env=env, stdout=logf, stderr=logf, start_new_session=True)
        try:
            wait_http(port, ready)
            load(port, 2)  # warm-up
            # When the load's own CPU is the limit (Connection: close makes wrk connect per request),
            # req/s of two servers converge; the server's CPU per request still tells them apart. (The
            # kernel's softirq work on the server's CPU is not charged to any process, so it is not in it.)
            pids = tree(proc.pid)
            before = cpu_seconds(pids)
            load_before = cpu_busy(LOAD_CPU)
            rps, p50, p99, errors = load(port, DURATION_S)
            used = cpu_seconds(pids) - before
            load_after = cpu_busy(LOAD_CPU)
            busy = 100.0 * (load_after[0] - load_before[0]) / max(1, load_after[1] - load_before[1])
            return rps, p50, p99, errors, 1e6 * used / max(1.0, rps * DURATION_S), busy
        except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired, KeyError,
                ValueError) as exc:
            logf.seek(0)
            log(f"  {name}: failed: {exc}\n{logf.read().decode(errors='replace')[-2000:]}")
            return None
        finally:
            stop(proc)


# scenario name -> {peer: hurricane's rate / the peer's}, for --check and the history.
MEASURED: Dict[str, Dict[str, float]] = {}


def scenario(key: str, title: str, app: str, path: str, servers: List[str], wrk_args: List[str] = (),
             extra: Optional[Dict[str, str]] = None, env: Optional[Dict[str, str]] = None,
             targets: Optional[Dict[str, float]] = None, limit: Optional[CpuLimit] = None,
             load: Optional[Load] = None, ready: Optional[str] = None, unit: str = "req/s",
             options: Optional[Dict[str, Dict[str, str]]] = None, alone: bool = False) -> None:
    """Runs every server REPEAT times, interleaved, and prints the median run of each. `options`:
    per server, extra settings on top of `extra` (e.g. its thread count). `alone`: the WSGI app is
    also called in a loop without a server (bench/apps/app_alone.py), interleaved with the servers,
    for the floor under every server's CPU a request.

    The ratio hurricane / peer is the median over rounds of the two servers' ratio within a round
    (paired), not the ratio of two medians: on this kind of machine the same binary's CPU a request
    swings by 30 % from one run to the next (the virtual CPU's speed, not the server's work: the
    syscalls a request are the same in fast and slow runs), and two medians taken from different
    rounds can each land on a slow or a fast spell. Every other round runs the servers in reverse
    order, so no server always runs first or right after the load generator's warm-up. The table
    gives the range of the rounds' ratios beside the median."""
    if GATE and key not in GATE:
        log(f"== {title}: no floors, not run by --check")
        return
    servers = gate_servers(key, servers)
    log(f"== {title}")
    load = load or wrk_load(path, list(wrk_args))
    rounds: List[Dict[str, tuple]] = []
    alone_runs: List[float] = []
    for round_ in range(REPEAT):
        done: Dict[str, tuple] = {}
        for name in (servers if round_ % 2 == 0 else servers[::-1]):
            log(f"  {name} (run {round_ + 1}/{REPEAT}) ...")
            settings = dict(extra or {}, **(options or {}).get(name, {}))
            result = run_one(server_base(name), app, ready or path, 1, load, settings, env or {}, limit)
            if result is not None:
                done[name] = result
        rounds.append(done)
        if alone:
            log(f"  app alone (run {round_ + 1}/{REPEAT}) ...")
            alone_us = app_alone(app, path, env or {})
            if alone_us is not None:
                alone_runs.append(alone_us)
    results = {}
    for name in servers:
        done = sorted((r[name] for r in rounds if name in r), key=lambda r: r[0])
        results[name] = done[len(done) // 2] if done else None
    ours = results.get(servers[0])
    print(f"\n### {title}\n")
    print(f"| server | {unit} | p50 | p99 | errors | server CPU each | load's CPU | {servers[0]} / server "
          f"(median of rounds, range) | CPU: server / {servers[0]} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios: Dict[str, float] = {}
    for name, result in results.items():
        if result is None:
            print(f"| {name} | failed | | | | | | | |")
            continue
        rps, p50, p99, errors, cpu_us, busy = result
        ratio = ""
        paired = [r[servers[0]][0] / r[name][0] for r in rounds
                  if servers[0] in r and name in r and r[name][0] > 0]
        if paired and name != servers[0]:
            ratios[name] = median(paired)
            ratio = f"{ratios[name]:.2f}x ({min(paired):.2f}-{max(paired):.2f})"
            target = (targets or {}).get(name)
            if target:
                ratio += " (target >= %.1fx: %s)" % (target, "met" if ratios[name] >= target else "NOT met")
        cpu_ratio = f"{cpu_us / ours[4]:.2f}x" if ours and name != servers[0] and ours[4] and rps > 0 else ""
        print(f"| {name} | {rps:,.0f} | {p50} | {p99} | {errors} | {cpu_us:.1f} us | {busy:.0f} % | {ratio} "
              f"| {cpu_ratio} |")
    if alone_runs:
        ratios.update(print_app_alone(median(alone_runs), results, servers[0]))
    MEASURED[key] = ratios
    record_history(key, ratios)
    sys.stdout.flush()


def median(values: List[float]) -> float:
    """The middle of ``values``; the mean of the middle two for an even count."""
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


# Set by main for --check: scenario key -> the peers with floors, the only ones the gate runs.
GATE: Dict[str, List[str]] = {}


def gate_servers(key: str, servers: List[str]) -> List[str]:
    """Under --check, hurricane and the peers that scenario has floors for (more rounds of fewer
    servers tell a ratio more surely in the same time); otherwise every server."""
    if not GATE:
        return servers
    return [servers[0]] + [name for name in servers[1:] if name in GATE[key]]


def app_alone(app: str, path: str, env_extra: Dict[str, str]) -> Optional[float]:
    """The app's own CPU a request, in us: called in a loop on the server's CPU, no server at all.
    None (and why, logged) when the run failed, as a server's failed run is left out."""
    env = dict(os.environ, PYTHONPATH=str(APPS), **env_extra)
    env.pop("VIRTUAL_ENV", None)
    cmd = ["taskset", "-c", SERVER_CPU, str(VENV / "bin" / "python"), str(APPS / "app_alone.py"), app, path,
           str(DURATION_S)]
    try:
        out = subprocess.run(cmd, cwd=APPS, env=env, capture_output=True, text=True, check=True,
                             timeout=DURATION_S + 120)
        return float(json.loads(out.stdout.strip().splitlines()[-1])["cpu_us"])
    except subprocess.CalledProcessError as exc:
        log(f"  app alone: failed: {exc}\n{exc.stderr[-2000:]}")
    except (subprocess.TimeoutExpired, IndexError, KeyError, ValueError) as exc:
        log(f"  app alone: failed: {exc}")
    return None


def print_app_alone(alone_us: float, results: Dict[str, Optional[tuple]], ours: str) -> Dict[str, float]:
    """Each server's CPU a request over the app's own: the most a server that cost nothing could be
    ahead of it when both keep the CPU busy, i.e. how much of a ratio is still there to win; and
    what the server itself adds to a request (the noise of the runs is in it too). Returns, for the
    history, hurricane's rate over that of a server that cost nothing (1.0 at best), like the bare
    loop's ratio."""
    print(f"\nApp alone (bench/apps/app_alone.py: the view called in a loop on CPU {SERVER_CPU}, no server, "
          f"median of {REPEAT}): **{alone_us:.1f} us** of CPU a request, {1e6 / alone_us:,.0f} a CPU second.\n")
    print("| server | CPU a request / app alone (a server that cost nothing / server) "
          "| the server's own CPU a request |")
    print("|---|---:|---:|")
    for name, result in results.items():
        if result is not None and result[4] > 0:
            print(f"| {name} | {result[4] / alone_us:.2f}x | {result[4] - alone_us:+.1f} us |")
    mine = results.get(ours)
    return {"app alone": alone_us / mine[4]} if mine is not None and mine[4] > 0 else {}


def server_base(name: str) -> str:
    """A server's command family: "granian (8 threads)" runs as "granian"."""
    return name.split(" (")[0]


def fair_spread() -> None:
    """4 workers under sustained load: requests per worker from hurricane's exit log."""
    log("== fair spread, 4 workers")
    port = free_port()
    cmd = server_command("hurricane", "hello", port, 4, {})
    cmd[cmd.index("--log-level") + 1] = "info"  # the exit lines carry each worker's request count
    env = dict(os.environ, PYTHONPATH=str(APPS))
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *cmd], cwd=APPS, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(port, "/")
        subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c50", f"-d{DURATION_S}s",
                        f"http://127.0.0.1:{port}/"], capture_output=True, check=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    counts = [int(n) for n in re.findall(r"event=exit .*requests=(\d+)", err)]
    mean = sum(counts) / len(counts) if counts else 0
    worst = max(counts) / mean if mean else float("inf")
    print("\n### Fair spread: hello, 4 workers, wrk -c50\n")
    print(f"requests per worker: {counts}; busiest / mean = {worst:.2f} "
          f"(target <= 1.5: {'met' if worst <= 1.5 else 'NOT met'})")


def tree(root: int) -> List[int]:
    """`root` and every process below it (from /proc/*/stat), for memory totals."""
    parents: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += frontier
    return found


def smaps_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory() -> None:
    """4 workers of the bench Django project: every process's PSS, summed (what the pod is billed),
    after each served requests; and for hurricane, how long a fifth worker takes to be ready."""
    log("== memory, 4 Django workers")
    workers = 4
    servers = ["hurricane --preload", "hurricane", "gunicorn --preload", "gunicorn sync", "granian"]
    runs: Dict[str, List[int]] = {name: [] for name in servers}
    spawns: Dict[str, List[int]] = {name: [] for name in servers}
    env = dict(os.environ, PYTHONPATH=str(APPS), DJANGO_SETTINGS_MODULE="benchsite.settings")
    env.pop("VIRTUAL_ENV", None)
    for round_, name in ((r, n) for r in range(REPEAT) for n in servers):
        log(f"  {name} (run {round_ + 1}/{REPEAT}) ...")
        port = free_port()
        cmd = server_command(name, "benchsite.wsgi", port, workers, {})
        if name.startswith("hurricane"):
            cmd[cmd.index("--log-level") + 1] = "info"  # the ready lines carry spawn_ms
        with tempfile.TemporaryFile() as logf:
            proc = subprocess.Popen(cmd, cwd=APPS, env=env, stdout=logf, stderr=logf, start_new_session=True)
            try:
                wait_http(port, "/json")
                time.sleep(2)  # every worker up
                subprocess.run(["wrk", "-t1", "-c16", "-d3s", f"http://127.0.0.1:{port}/json"],
                               capture_output=True, check=True)
                time.sleep(0.5)
                runs[name].append(sum(smaps_kb(pid, "Pss") for pid in tree(proc.pid)))
                if name.startswith("hurricane"):
                    os.kill(proc.pid, signal.SIGTTIN)
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        logf.seek(0)
                        ready = re.findall(r"event=ready worker=5 .*spawn_ms=(\d+)", logf.read().decode())
                        if ready:
                            spawns[name].append(int(ready[0]))
                            break
                        time.sleep(0.05)
            finally:
                stop(proc)
    totals = {name: sorted(done)[len(done) // 2] for name, done in runs.items() if done}
    spawn = {name: f"{sorted(done)[len(done) // 2]} ms" for name, done in spawns.items() if done}
    ours = totals.get("hurricane --preload")
    print(f"\n### Memory: {workers} Django workers, total PSS of every process (after wrk -c16 3s), "
          f"median of {REPEAT}\n")
    print("| server | total PSS | 5th worker ready in | hurricane --preload / server |")
    print("|---|---:|---:|---:|")
    for name in servers:
        total = totals.get(name)
        if total is None:
            print(f"| {name} | failed | | |")
            continue
        ratio = f"{ours / total:.2f}x" if ours and name != "hurricane --preload" else ""
        if name == "gunicorn --preload" and ours:
            ratio += " (target <= 1.0x: %s)" % ("met" if ours <= total else "NOT met")
        print(f"| {name} | {total / 1024:.1f} MB | {spawn.get(name, '')} | {ratio} |")
    sys.stdout.flush()


def postgres_setup() -> None:
    """The `db` scenario's database on the local PostgreSQL: 100 items to read, an empty visit table."""
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
    exists = subprocess.run(psql + ["-tAc", "SELECT 1 FROM pg_database WHERE datname = 'hurricane_bench'"],
                            capture_output=True, text=True, check=True).stdout.strip()
    if not exists:
        subprocess.run(psql + ["-c", "CREATE DATABASE hurricane_bench"], check=True)
    subprocess.run(psql + ["-d", "hurricane_bench", "-c",
                           "DROP TABLE IF EXISTS bench_item, bench_visit;"
                           "CREATE TABLE bench_item (id serial PRIMARY KEY, name varchar(100) NOT NULL,"
                           " price integer NOT NULL);"
                           "INSERT INTO bench_item (name, price) SELECT 'item ' || n, n * 7 FROM generate_series(1, 100) n;"
                           "CREATE TABLE bench_visit (id serial PRIMARY KEY, path varchar(100) NOT NULL,"
                           " at timestamptz NOT NULL);"], check=True)


def asgi_scenarios(wanted: set) -> None:
    """Issue 23's table: every ASGI server, 1 worker, the same apps."""
    django_env = {"DJANGO_SETTINGS_MODULE": "benchsite.settings"}
    asgi = {"asgi": "1"}
    if not wanted or "asgi" in wanted:
        scenario("asgi", "ASGI: 10 KB GET, keep-alive", "asgi10k:application", "/", ASGI_SERVERS, extra=asgi,
                 targets={"uvicorn httptools+uvloop": 1.2, "granian asgi": 1.2, "gunicorn asgi": 1.2})
    if not wanted or "ws" in wanted:
        scenario("ws", "ASGI: WebSocket echo, 64-byte text, 32 connections", "wsecho:application", "/ws",
                 ASGI_SERVERS, extra=asgi, load=ws_load("/ws"), ready="/", unit="msg/s",
                 targets={"uvicorn httptools+uvloop": 1.2, "granian asgi": 1.2, "gunicorn asgi": 1.2})
    if not wanted or "channels" in wanted:
        scenario("channels", "ASGI: Channels AsyncWebsocketConsumer echo, 64-byte text, 32 connections",
                 "benchsite.asgi:application", "/ws", ASGI_SERVERS, extra=asgi, env=django_env,
                 load=ws_load("/ws"), ready="/json", unit="msg/s",
                 targets={"uvicorn httptools+uvloop": 1.1, "granian asgi": 1.1, "gunicorn asgi": 1.1})
    if not wanted or "django-asgi" in wanted:
        scenario("django-async", "ASGI: Django async view (JsonResponse)", "benchsite.asgi:application", "/ajson",
                 ASGI_SERVERS, extra=asgi, env=django_env,
                 targets={"uvicorn httptools+uvloop": 1.1, "granian asgi": 1.1, "gunicorn asgi": 1.1})
        scenario("django-sync-asgi", "ASGI: Django sync view (JsonResponse) under ASGI",
                 "benchsite.asgi:application", "/json", ASGI_SERVERS, extra=asgi, env=django_env,
                 targets={"uvicorn httptools+uvloop": 1.1, "granian asgi": 1.1, "gunicorn asgi": 1.1})
        scenario("django-sync-wsgi", "The same Django sync view under WSGI, and hurricane's ASGI worker",
                 "benchsite.wsgi", "/json", ["hurricane", "granian", "gunicorn sync", "hurricane (--asgi)"],
                 env=django_env, options={"hurricane (--asgi)": {"asgi": "1", "app": "benchsite.asgi:application"}})
    if not wanted or "sse" in wanted:
        streams = int(os.environ.get("SSE_STREAMS", "1000"))
        scenario("sse", f"ASGI: {streams:,} server-sent-event streams, an event every 10 ms each", "sse:application",
                 "/sse", ASGI_SERVERS, extra=asgi, load=sse_load("/sse", streams), ready="/",
                 unit="events/s")


# key -> (title, path, CONN_MAX_AGE, driver): issue 25's database views.
DB_SCENARIOS = {
    "db-read": ("Django ORM read of 10 rows, PostgreSQL, CONN_MAX_AGE=600", "/db/read", "600", "psycopg"),
    "db-read-conn0": ("Django ORM read of 10 rows, PostgreSQL, CONN_MAX_AGE=0 (Django's default)", "/db/read", "0",
                      "psycopg"),
    "db-write": ("Django ORM insert of one row, PostgreSQL, CONN_MAX_AGE=600", "/db/write", "600", "psycopg"),
    "db-read-psycopg2": ("Django ORM read of 10 rows, PostgreSQL, CONN_MAX_AGE=600, psycopg2", "/db/read", "600",
                         "psycopg2"),
}


def db_scenarios(only: Optional[set] = None) -> None:
    """Issue 25: Django views on the local PostgreSQL, at each server's defaults (hurricane's is
    --threads auto) and its best thread setting; psycopg 3 (what Django takes when both import) and
    the read again with psycopg2, which waits for a query inside libpq's blocking call (the GIL
    released around all of it) where psycopg 3 waits in its own loop. `only`: these keys, else all."""
    postgres_setup()
    servers = ["hurricane", "hurricane (--threads 1)", "hurricane (--threads 8)", "granian",
               "granian (--blocking-threads 8)", "gunicorn sync", "gunicorn gthread"]
    options = {"hurricane (--threads 1)": {"threads": "1"}, "hurricane (--threads 8)": {"threads": "8"},
               "granian (--blocking-threads 8)": {"blocking_threads": "8"},
               "gunicorn gthread": {"threads": "8"}}
    targets = {"granian": 1.2, "granian (--blocking-threads 8)": 1.2}
    for key, (title, path, age, driver) in DB_SCENARIOS.items():
        if only and key not in only:
            continue
        scenario(key, title, "benchsite.wsgi", path, servers, options=options, targets=targets, alone=True,
                 env={"DJANGO_SETTINGS_MODULE": "benchsite.settings", "BENCH_DB": "postgres",
                      "BENCH_CONN_MAX_AGE": age, "BENCH_PG_DRIVER": driver})


# The regression gate: bench/floors.json holds, per scenario, the least ratio hurricane / peer each
# peer may reach; a run fails a floor only below it by more than this margin (runs here swing by
# 10-20 %, medians of 3 by less).
FLOORS = ROOT / "bench" / "floors.json"
HISTORY = ROOT / "bench" / "history.jsonl"
NOISE_MARGIN = 0.10


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+changes" if dirty else "")


def loop_seconds() -> float:
    """A fixed pure-Python loop (3 million additions in a function, best of 3) on the server's CPU,
    timed once a run. Why: the model name does not tell machines apart (two "AMD EPYC" VMs of
    sessions 19 and 20 differed 2.6x in speed), and a ratio read on a slow, noisy machine is not
    one read on a fast, quiet one; the history keeps this beside each ratio."""
    if not _LOOP_S:
        allowed = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(SERVER_CPU)})
        try:
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                total = 0
                for i in range(3_000_000):
                    total += i
                best = min(best, time.perf_counter() - started)
        finally:
            os.sched_setaffinity(0, allowed)
        _LOOP_S.append(best)
    return _LOOP_S[0]


_LOOP_S: List[float] = []


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs {model}, Python {sys.version.split()[0]} (bench venv), 3M-addition loop "
            f"{loop_seconds():.3f} s")


def record_history(key: str, ratios: Dict[str, float]) -> None:
    """Appends one scenario's ratios to bench/history.jsonl as soon as it is measured."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(HISTORY, "a") as f:
        f.write(json.dumps({"commit": commit(), "date": stamp, "scenario": key,
                            "ratios": {k: round(v, 3) for k, v in ratios.items()},
                            "machine": machine(), "repeat": REPEAT, "seconds": DURATION_S}) + "\n")


def check_floors() -> int:
    """Compares MEASURED with the floors; prints what fell below (beyond the margin). Exit status."""
    floors = json.loads(FLOORS.read_text())
    rows, failed = [], 0
    for key, peers in floors.items():
        if key.startswith("_") or key not in MEASURED:
            continue
        for peer, floor in peers.items():
            ratio = MEASURED[key].get(peer)
            if ratio is None:
                rows.append((key, peer, floor, "not measured", "FAILED (the peer did not run)"))
                failed += 1
                continue
            ok = ratio >= floor * (1 - NOISE_MARGIN)
            failed += not ok
            rows.append((key, peer, floor, f"{ratio:.2f}x", "ok" if ok else "BELOW FLOOR"))
    print(f"\n### Regression gate (floors: bench/floors.json, noise margin {NOISE_MARGIN:.0%})\n")
    print("| scenario | peer | floor | measured | result |")
    print("|---|---|---:|---:|---|")
    for key, peer, floor, measured, result in rows:
        print(f"| {key} | {peer} | {floor:.2f}x | {measured} | {result} |")
    print(f"\n{failed} below their floor" if failed else "\nevery ratio is at or above its floor")
    return 1 if failed else 0


def print_history() -> None:
    """bench/history.jsonl as a markdown table (docs/PERFORMANCE.md keeps its latest rows)."""
    print("| date | commit | scenario | hurricane / peer |")
    print("|---|---|---|---|")
    if not HISTORY.exists():
        return
    for line in HISTORY.read_text().splitlines():
        entry = json.loads(line)
        ratios = ", ".join(f"{peer} {ratio:.2f}x" for peer, ratio in entry["ratios"].items())
        print(f"| {entry['date'][:10]} | {entry['commit']} | {entry['scenario']} | {ratios} |")


SCENARIO_NAMES = ["hello", "close", "close-limit", "django", "asgi", "ws", "channels", "django-asgi", "sse", "static",
                  "threads", "db", *DB_SCENARIOS, "spread", "memory", "consume"]


def main() -> None:
    args = sys.argv[1:]
    if args == ["--history"]:
        print_history()
        return
    check = "--check" in args
    wanted = {a for a in args if a != "--check"}
    unknown = wanted - set(SCENARIO_NAMES)
    if unknown:
        print(f"unknown scenario {', '.join(sorted(unknown))}; choose from {' '.join(SCENARIO_NAMES)}",
              file=sys.stderr)
        sys.exit(2)
    if check:
        floors = {key: list(peers) for key, peers in json.loads(FLOORS.read_text()).items() if not key.startswith("_")}
        GATE.update(floors)
        if "BENCH_REPEAT" not in os.environ:
            global REPEAT
            REPEAT = GATE_REPEAT
    if check and not wanted:
        # The gate runs what has floors (the ratio scenarios), not the memory or consume runs.
        wanted = {("db" if k.startswith("db") else "django-asgi" if k.startswith("django-") else k) for k in GATE}
    setup()
    static_dir = Path(tempfile.mkdtemp(prefix="hurricane-bench-"))
    (static_dir / "1mib.bin").write_bytes(os.urandom(1 << 20))
    all_servers = ["hurricane", "gunicorn sync", "gunicorn gthread", "uWSGI", "granian"]
    print(f"\nMachine: {machine()}, {time.strftime('%Y-%m-%d')}, commit {commit()}; 1 worker, server "
          f"on CPU {SERVER_CPU}, load (wrk -t1 -c50, or bench/wsload) on CPU {LOAD_CPU}, "
          f"{DURATION_S}s per run after a 2s warm-up, {REPEAT} interleaved rounds: each server's median run, and "
          f"each ratio the median of the rounds' ratios.")
    if not wanted or "hello" in wanted:
        scenario("hello", "Hello world, keep-alive", "hello", "/", all_servers + ["bare loop"],
                 targets={"granian": 1.3, "gunicorn sync": 10.0})
    if not wanted or "close" in wanted:
        scenario("close", "Hello world, Connection: close", "hello", "/", all_servers,
                 wrk_args=["-H", "Connection: close"], targets={"uWSGI": 1.0, "granian": 1.2})
    if not wanted or "close-limit" in wanted:
        try:
            limit: Optional[CpuLimit] = CpuLimit(POD_CPU_QUOTA_US)
        except OSError as exc:
            limit = None
            print(f"\n### Hello world, Connection: close, at a CPU limit\n\nskipped: no cgroup to set a CPU "
                  f"quota in ({exc}); run as root on a machine with the cgroup cpu controller")
        if limit is not None:
            try:
                scenario("close-limit", f"Hello world, Connection: close, server limited to "
                         f"{POD_CPU_QUOTA_US / 1e5:.1f} CPU (a pod's limits.cpu)", "hello", "/",
                         ["hurricane", "granian", "uWSGI"], wrk_args=["-H", "Connection: close"],
                         targets={"granian": 1.2}, limit=limit)
            finally:
                limit.remove()
    if not wanted or "django" in wanted:
        scenario("django", "Django JsonResponse view, keep-alive", "benchsite.wsgi", "/json",
                 ["hurricane", "gunicorn sync", "gunicorn gthread", "granian", "bare loop"],
                 env={"DJANGO_SETTINGS_MODULE": "benchsite.settings"}, targets={"granian": 1.4}, alone=True)
    asgi_scenarios(wanted)
    if not wanted or "static" in wanted:
        scenario("static", "1 MiB static file, keep-alive", "hello", "/static/1mib.bin", ["hurricane", "granian"],
                 extra={"static": str(static_dir)}, targets={"granian": 1.0})
    if not wanted or "threads" in wanted:
        scenario("threads", "Sleeping 10 ms view, 8 threads", "sleepy", "/", ["hurricane", "gunicorn gthread"],
                 extra={"threads": "8"}, targets={"gunicorn gthread": 1.0})
    if not wanted or "db" in wanted:
        db_scenarios()
    elif wanted & set(DB_SCENARIOS):
        db_scenarios(wanted & set(DB_SCENARIOS))
    if not wanted or "spread" in wanted:
        fair_spread()
    if not wanted or "memory" in wanted:
        memory()
    if not wanted or "consume" in wanted:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import consume

        consume.scenario(REPEAT)
    shutil.rmtree(static_dir, ignore_errors=True)
    if check:
        sys.exit(check_floors())


if __name__ == "__main__":
    main()
