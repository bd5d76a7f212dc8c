"""``python -m serve_app.preflight``: the same as ``python -m serve_app.preflight.cli``."""

import sys

from serve_app.preflight.cli import main

sys.exit(main())
