"""``python -m signalbus``: the same program as the ``signalbus`` command."""

import sys

from .cli import main

sys.exit(main())
