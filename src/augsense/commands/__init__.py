"""The sub-commands, one module each.

Each public module here exposes ``register(subparsers)``, adding its sub-command with
``set_defaults(func=handler)``, where ``handler(args) -> int`` raises AugsenseError for bad input.
Modules whose name starts with ``_`` hold shared helpers (``_options``: config flags and loading).
"""
