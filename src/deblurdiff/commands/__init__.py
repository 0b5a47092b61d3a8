"""CLI subcommands: thin glue that parses arguments and calls into the library.

Each module exposes ``register(subparsers)`` and sets ``func`` on its parser. Import heavy libraries
inside the function that runs, not at module level.
"""
