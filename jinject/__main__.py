"""`python -m jinject ...` is the `jinject` command."""

import sys

from jinject.cli import main

sys.exit(main())
