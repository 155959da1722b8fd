"""`python -m animegan` is the same as the `animegan` command."""

import sys

from animegan.cli import main

sys.exit(main())
