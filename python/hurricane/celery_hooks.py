"""`hurricane celery -- COMMAND`: runs the user's Celery command in this process, with hooks that
report to the master what the probes and metrics need. Nothing in the user's Celery app changes.

Why from inside: `celery inspect ping` probes import the whole app per probe and time out behind
a busy worker; timer-based file-touch bootsteps die silently when the consumer restarts (Celery
cancels the timer entries of a failed connection). Here:

- a consumer bootstep, added in `worker_init`, starts a once-a-second tick on the consumer's own
  timer each time the consumer (re)starts: the ticks come from the event loop (a wedged loop stops
  them), survive consumer restarts (the step starts again), and the step's start/stop say when the
  broker connection is up or lost;
- Celery's signals report readiness (`worker_ready`), shutdown and every task's outcome and duration;
  task signals fire in the prefork pool's children, which inherited the status pipe and write to it
  directly (one write per line, under PIPE_BUF, so lines never mix), so nothing is lost when a child
  is recycled;
- every --queue-stats-interval the same timer reads the length of each queue the worker consumes,
  on the worker's own broker connection (RabbitMQ: a passive queue.declare on a channel of its own,
  so a missing queue's 404 cannot close the consumer's; Redis: kombu's own count, which adds up the
  priority sub-queues), and reports them; a queue the broker does not have yet is 0;
- for beat, `Scheduler.tick` and `Scheduler.apply_entry` are wrapped: each tick and each entry sent
  is reported, and beat sleeps at most a third of --liveness-timeout between ticks, so a live beat
  always ticks in time.

Stdlib only besides Celery itself, which the user's environment has.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time
from typing import IO, Any, Dict, List

from hurricane import checks
from hurricane.supervision import StatusPipe, Stopper, boot_failure, control_loop

# Celery reads the control pipe on a thread started once it is hooked, not while loading.
WATCH_CONTROL_WHILE_LOADING = False
# Task names are cut to this many characters (a broken message may carry any header); how many
# distinct ones get their own series is the master's bound (src/celery.rs), which sees every child.
MAX_NAME_CHARS = 200
TICK_INTERVAL_S = 1.0


class Reporter:
    """Sends `{"t": "celery", "ev": ...}` lines to the master."""

    def __init__(self, status: Any) -> None:
        self.status = status

    def send(self, ev: str, **fields: Any) -> None:
        self.status.send(t="celery", ev=ev, **fields)

    @staticmethod
    def task_name(name: str) -> str:
        return name[:MAX_NAME_CHARS]


class QueueReader:
    """Reads the lengths of the queues a consumer consumes, on its own connection."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.channel: Any = None

    @staticmethod
    def names(c: Any) -> List[str]:
        task_consumer = getattr(c, "task_consumer", None)
        queues = getattr(task_consumer, "queues", None)
        if queues is None:  # the Tasks step has not started yet
            queues = list(c.app.amqp.queues.consume_from.values())
        return sorted({q.name for q in queues})

    def _channel(self, c: Any) -> Any:
        if c.connection.transport.driver_type != "amqp":
            # kombu's virtual transports (Redis, SQS...) answer from their own channel, never closing it.
            return c.connection.default_channel
        if self.channel is None or not getattr(self.channel, "is_open", False):
            self.channel = c.connection.channel()
        return self.channel

    def read(self, c: Any) -> None:
        from kombu.exceptions import ChannelError, OperationalError

        lengths: Dict[str, int] = {}
        try:
            for name in self.names(c):
                try:
                    lengths[name] = int(self._channel(c).queue_declare(queue=name, passive=True)[1])
                except ChannelError:
                    lengths[name] = 0  # not declared yet (RabbitMQ's 404; Redis: no list yet)
                    self.channel = None
        except (OSError, OperationalError) as exc:
            self.channel = None
            print(f"hurricane: queue lengths not read: {exc}", file=sys.stderr)
            return
        except Exception as exc:  # noqa: BLE001 - a broker quirk must not stop the consumer's timer
            self.channel = None
            print(f"hurricane: queue lengths not read: {type(exc).__name__}: {exc}", file=sys.stderr)
            return
        self.reporter.send("queues", lengths={self.reporter.task_name(k): v for k, v in lengths.items()})


def install(reporter: Reporter, liveness_s: float, queue_stats_s: float) -> None:
    from celery import bootsteps, signals  # the user's Celery

    started_at: Dict[str, float] = {}
    reader = QueueReader(reporter)

    class HurricaneTick(bootsteps.StartStopStep):
        """Ticks on the consumer's timer; started on every consumer (re)start, after the connection."""

        requires = ("celery.worker.consumer.connection:Connection",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.entries: List[Any] = []

        def start(self, c: Any) -> None:
            reporter.send("connected")
            reporter.send("tick")
            self.entries = [c.timer.call_repeatedly(TICK_INTERVAL_S, lambda: reporter.send("tick"))]
            if queue_stats_s > 0:
                reader.channel = None  # a restarted consumer has a new connection
                c.timer.call_after(0.0, reader.read, (c,))
                self.entries.append(c.timer.call_repeatedly(queue_stats_s, reader.read, (c,)))

        def stop(self, c: Any) -> None:
            for entry in self.entries:
                try:
                    entry.cancel()
                except Exception:  # noqa: BLE001 - a cancelled entry is fine
                    pass
            self.entries = []
            reporter.send("lost")

        def shutdown(self, c: Any) -> None:
            self.stop(c)

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        sender.app.steps["consumer"].add(HurricaneTick)

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        reporter.send("started", django=checks.is_django())

    def on_shutting_down(**_: Any) -> None:
        reporter.send("stopping")

    def on_prerun(task_id: str = "", task: Any = None, **_: Any) -> None:
        started_at[task_id] = time.monotonic()
        reporter.send("task_start")

    def on_postrun(task_id: str = "", task: Any = None, state: Any = None, **_: Any) -> None:
        began = started_at.pop(task_id, None)
        seconds = time.monotonic() - began if began is not None else 0.0
        result = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried", "REJECTED": "rejected",
                  "REVOKED": "revoked"}.get(str(state), "failed")
        name = reporter.task_name(getattr(task, "name", None) or "unknown")
        reporter.send("task", name=name, result=result, seconds=round(seconds, 6))

    def on_rejected(message: Any = None, **_: Any) -> None:
        name = "unknown"
        try:
            name = message.headers.get("task") or name
        except Exception:  # noqa: BLE001 - a malformed message has no name
            pass
        reporter.send("task", name=reporter.task_name(name), result="rejected", seconds=0.0)

    def on_revoked(request: Any = None, **_: Any) -> None:
        name = getattr(request, "name", None) or getattr(request, "task", None) or "unknown"
        reporter.send("task", name=reporter.task_name(str(name)), result="revoked", seconds=0.0)

    # weak=False: these closures live as long as the process.
    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.worker_shutting_down.connect(on_shutting_down, weak=False)
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.task_rejected.connect(on_rejected, weak=False)
    signals.task_revoked.connect(on_revoked, weak=False)

    from celery import beat

    original_tick = beat.Scheduler.tick
    original_apply_entry = beat.Scheduler.apply_entry
    first = [True]

    def tick(self: Any, *args: Any, **kwargs: Any) -> float:
        interval = original_tick(self, *args, **kwargs)
        if first[0]:
            first[0] = False
            reporter.send("started", django=checks.is_django(), beat=True)
            reporter.send("connected")
        reporter.send("beat_tick", at=time.time())
        return min(interval, liveness_s / 3.0) if interval else interval

    def apply_entry(self: Any, entry: Any, producer: Any = None) -> None:
        before = entry.total_run_count
        original_apply_entry(self, entry, producer=producer)
        reporter.send("beat_sent", entry=reporter.task_name(entry.name), ok=entry.total_run_count >= before)

    beat.Scheduler.tick = tick
    beat.Scheduler.apply_entry = apply_entry


def load(config: Dict[str, Any], status: StatusPipe) -> Reporter:
    """Hook into the user's Celery (imported here); a Celery that cannot be imported ends the
    process as a boot failure. The command itself is imported when it runs (``serve``)."""
    command = config.get("command") or {}
    reporter = Reporter(status)
    try:
        install(reporter, float(command.get("liveness_s", 60)), float(command.get("queue_stats_s", 5)))
    except ImportError as exc:
        boot_failure(status, dict(config, app=command.get("display", "celery")), exc, "import")
    return reporter


def serve(config: Dict[str, Any], control: IO[bytes], status: StatusPipe, booted: float, reporter: Reporter,
          stopper: Stopper) -> None:
    """Run the user's Celery command in this process, as its own ``__main__``."""
    # Celery installs its own handlers (TERM warm, QUIT cold shutdown); start from the defaults. A
    # TERM that came while Celery was being hooked ends the process as it would have then.
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    if stopper.asked:
        os.kill(os.getpid(), signal.SIGTERM)
    command = config.get("command") or {}
    argv = [str(a) for a in command.get("argv", [])]
    # Check requests from the master; at EOF (the master is gone) Celery gets its warm shutdown
    # and a moment for it before the process ends.
    threading.Thread(target=control_loop, args=(control, lambda: os.kill(os.getpid(), signal.SIGTERM), status),
                     name="hurricane-control", daemon=True).start()
    # The process is up and hooked; Celery's own readiness comes as "started".
    status.send(t="ready", boot_ms=int((time.monotonic() - booted) * 1000), dirs=[], django=False)
    sys.argv = argv
    if command.get("module"):
        runpy.run_module(command["module"], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(command["path"], run_name="__main__")
