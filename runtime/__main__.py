"""`python -m dlspec`: the command line."""

import sys

from dlspec.cli import main

sys.exit(main())
