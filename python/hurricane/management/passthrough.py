"""What ``manage.py serve`` and ``manage.py consume`` share: find the hurricane binary, fill in what
the project already says, and exec the binary with every other option passed through.

Why exec: the hurricane master then *is* this process (same pid), so signals, exit codes and PID 1
duties behave exactly as with the binary. Why not Django's argument parser: the binary defines the
options (one definition, src/kinds/*.rs), and a second copy here would drift. ``--help`` is the
binary's own, with this command's usage line and what it fills in said first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import List, Optional

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-not-found]

NOT_FOUND = ("error: cannot find the hurricane binary; pip install hurricane into this environment, "
             "put it on PATH, or set HURRICANE_BINARY\n")
HELP = ("-h", "--help")


def find_binary() -> Optional[str]:
    """The `hurricane` that `pip install hurricane` put next to this interpreter (the virtualenv's
    bin/, even when it is not activated), so the binary always matches this Python package; else
    $HURRICANE_BINARY; else `hurricane` on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "hurricane")
    if os.access(beside, os.X_OK) and not os.path.isdir(beside):
        return beside
    explicit = os.environ.get("HURRICANE_BINARY")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("hurricane")


def given(args: List[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in args for n in names)


class PassThroughCommand(BaseCommand):
    """A management command that is one of the binary's subcommands (``subcommand``)."""

    subcommand = ""
    # The usage line `--help` shows instead of the binary's, and what the command fills in.
    usage = ""
    fills_in = ""

    def project_args(self, args: List[str]) -> List[str]:
        """Options the project's settings supply (e.g. -w from WSGI_APPLICATION) unless given;
        raises CommandError when the project cannot supply one that is needed."""
        return []

    def complete(self, args: List[str]) -> List[str]:
        """The command line with what the project fills in for options given without a value."""
        return args

    def hurricane_argv(self, binary: str, args: List[str], manage_py: str) -> List[str]:
        args = self.complete(args)
        argv = [binary, self.subcommand] + self.project_args(args)
        if not given(args, "--python"):
            argv += ["--python", sys.executable]
        if not given(args, "--chdir") and manage_py:
            argv += ["--chdir", os.path.dirname(os.path.abspath(manage_py))]
        return argv + args

    def print_help(self, prog_name: str, subcommand: str) -> None:  # Django's `help serve` lands here
        binary = find_binary()
        if binary is None:
            sys.stderr.write(NOT_FOUND)
            sys.exit(1)
        self._help(binary)

    def _help(self, binary: str) -> None:
        text = subprocess.run([binary, self.subcommand, "--help"], stdout=subprocess.PIPE,
                              universal_newlines=True, check=False).stdout
        text = re.sub(r"^Usage: .*$", f"Usage: {self.usage}\n\n{self.fills_in}", text, count=1, flags=re.M)
        sys.stdout.write(text)

    def run_from_argv(self, argv: List[str]) -> None:
        binary = find_binary()
        if binary is None:
            sys.stderr.write(NOT_FOUND)
            sys.exit(1)
        args = argv[2:]
        if given(args, *HELP):
            self._help(binary)
            sys.exit(0)
        try:
            command = self.hurricane_argv(binary, args, argv[0])
        except CommandError as exc:
            sys.stderr.write(f"error: {exc}\n")
            sys.exit(2)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(binary, command)

    def handle(self, *args: str, **options: object) -> None:  # call_command(...) lands here
        self.run_from_argv(["manage.py", self.subcommand, *args])
