"""``python3 -m jumping.audit``: the same command as ``jumpctl audit``."""

import sys

from jumping.audit.cli import main

sys.exit(main())
