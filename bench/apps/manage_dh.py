"""django-hurricane's manage.py for the consume bench (run in target/bench-dh-venv)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dhsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
