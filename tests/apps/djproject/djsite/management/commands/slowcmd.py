"""A pre-start command that takes a while: /startup must stay 503 until it is done."""

import time

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Sleep, then say so."

    def add_arguments(self, parser):
        parser.add_argument("seconds", type=float)

    def handle(self, *args, **options):
        time.sleep(options["seconds"])
        self.stdout.write("slowcmd done")
