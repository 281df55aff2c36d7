"""`python -m agent` runs the same `meshelect` command as the console script."""

import sys

from agent.cli import main

sys.exit(main())
