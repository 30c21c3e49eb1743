"""``python -m augsense`` (and ``torchrun -m augsense``) runs the command line."""

import sys

from augsense.cli import main

sys.exit(main())
