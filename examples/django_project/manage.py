"""Django's command-line utility for the demo project (``python manage.py runserver``).

Credentials come from the ``GENESYSCLOUD_*`` environment variables (see demo_site/settings.py).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run a Django management command."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
