"""The one exception type users see for bad input: the command line prints its message and exits 2."""


class AugsenseError(ValueError):
    """Bad input or an impossible request, with a message that says what to do instead."""
