"""Errors that the CLI and the HTTP API turn into clear, one-line answers."""


class UsageError(Exception):
    """Bad usage or bad input: the message names the argument, file or field and why.

    The CLI prints it as one line and exits with status 2 (DESIGN §2).
    """
