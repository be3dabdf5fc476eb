"""`python -m ttcp`: the same as the `ttcp` command."""

import sys

from ttcp.cli import main

sys.exit(main())
