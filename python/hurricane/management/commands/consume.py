"""`python manage.py consume HANDLER [options]`: django-hurricane's entry point, kept, as
`hurricane consume` (see ``passthrough``). The broker settings come from the command line, then the
Django settings (AMQP_HOST, AMQP_PORT, AMQP_VHOST, AMQP_USER, AMQP_PASSWORD), then the environment
(AMQP_*): the binary reads the settings itself."""

from __future__ import annotations

from hurricane.management.passthrough import PassThroughCommand


class Command(PassThroughCommand):
    help = "Consume an AMQP queue with hurricane; every option of `hurricane consume --help` is accepted."
    subcommand = "consume"
    usage = "python manage.py consume [OPTIONS] --queue <NAME> --exchange <NAME> <HANDLER>"
    fills_in = ("Filled in from the project unless given: --python with this interpreter, --chdir with\n"
                "the directory of manage.py. HURRICANE_* and AMQP_* Django settings apply too (command\n"
                "line first, then settings, then the environment).")
