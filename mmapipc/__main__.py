"""python -m mmapipc: the command line."""

import sys

from mmapipc.cli import main

sys.exit(main())
