"""``python -m minicomp``: the same as the ``minicomp`` command."""

import sys

from .cli import main

sys.exit(main())
