"""`python manage.py consume HANDLER [options]`: consume an AMQP queue under the hurricane binary.

django-hurricane's entry point, kept: the command execs `hurricane consume` (so the pid, signals and
PID 1 duties are the binary's) with every option passed through; `--python` defaults to this
interpreter and `--chdir` to the directory of manage.py. The broker settings come from the command
line, then the Django settings (AMQP_HOST, AMQP_PORT, AMQP_VHOST, AMQP_USER, AMQP_PASSWORD), then the
environment (AMQP_*): the binary reads the settings itself.
"""

from __future__ import annotations

import os
import sys
from typing import List

from django.core.management.base import BaseCommand  # type: ignore[import-not-found]

from hurricane.management.commands.serve import find_binary, given


def hurricane_argv(binary: str, args: List[str], manage_py: str) -> List[str]:
    argv = [binary, "consume"]
    if not given(args, "--python", "-h", "--help"):
        argv += ["--python", sys.executable]
    if not given(args, "--chdir", "-h", "--help") and manage_py:
        argv += ["--chdir", os.path.dirname(os.path.abspath(manage_py))]
    return argv + args


class Command(BaseCommand):
    help = "Consume an AMQP queue with hurricane; every option of `hurricane consume --help` is accepted."

    def run_from_argv(self, argv: List[str]) -> None:
        binary = find_binary()
        if binary is None:
            sys.stderr.write(
                "error: cannot find the hurricane binary; put it on PATH (pip install hurricane, or "
                "cargo install --path .) or set HURRICANE_BINARY\n"
            )
            sys.exit(1)
        command = hurricane_argv(binary, argv[2:], argv[0])
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(binary, command)

    def handle(self, *args: str, **options: object) -> None:  # call_command("consume") lands here
        self.run_from_argv(["manage.py", "consume", *args])
