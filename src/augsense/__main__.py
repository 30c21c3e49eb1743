"""``python -m augsense`` (and ``torchrun -m augsense``) runs the command line."""

from augsense.cli import entry

entry()
