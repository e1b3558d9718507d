"""``python -m creditrelay``: the command line."""

import sys

from creditrelay.cli import main

sys.exit(main())
