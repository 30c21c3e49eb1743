"""Sub-commands beyond run/demo/layers/factors.

Each module here exposes ``register(subparsers)``, adding its sub-command with
``set_defaults(func=handler)``, where ``handler(args) -> int`` raises AugsenseError for bad input.
"""
