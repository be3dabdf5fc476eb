"""`python -m ttcp`: the same as the `ttcp` command."""

import sys

from .cli import main

sys.exit(main())
