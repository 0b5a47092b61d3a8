"""The ``deblurdiff`` command.

Each subcommand lives in ``deblurdiff.commands.<name>`` and exposes ``register(subparsers)``; the
modules are imported directly below (a typo fails at import, it cannot silently drop a command) and
keep heavy imports (torch, ray) inside their ``run`` so ``--help`` stays instant.

Exit codes (DESIGN §2): 0 success; 2 bad usage or bad input, one line naming the argument or file
and why; 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys

from deblurdiff import __version__
from deblurdiff.commands import deblur, demo, serve, synth, train
from deblurdiff.commands import eval as eval_command  # `eval` would shadow the builtin
from deblurdiff.errors import UsageError

# The subcommands, in the order `--help` lists them. A new command: import its module above and
# add it here (e.g. `convert` after `eval`).
COMMANDS = (synth, train, deblur, serve, eval_command, demo)
COMMAND_MODULES = tuple(module.__name__ for module in COMMANDS)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints the whole usage block on error; we print one line naming the problem.

    A mistyped flag is named even when argparse would first complain about a missing required
    argument (``deblurdiff deblur --modle x`` says ``--modle``, not "--model is required").
    """

    def parse_known_args(self, args=None, namespace=None):
        self._seen_args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def _unknown_flags(self) -> list[str]:
        flags = []
        for token in getattr(self, "_seen_args", []):
            if token == "--":
                break
            if (token.startswith("-") and token != "-" and not self._negative_number_matcher.match(token)
                    and token.split("=", 1)[0] not in self._option_string_actions):
                flags.append(token)
        return flags

    def error(self, message: str) -> None:  # type: ignore[override]
        unknown = self._unknown_flags()
        if unknown and "unrecognized arguments" not in message:
            message = f"unrecognized arguments: {' '.join(unknown)}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="deblurdiff",
        description="DeblurDiff: synthesise blur, train, deblur and serve (arXiv 2502.03810).",
    )
    parser.add_argument("--version", action="version", version=f"deblurdiff {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=OneLineArgumentParser
    )
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        if args.debug:
            raise
        print(f"deblurdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deblurdiff {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the top level reports anything else as exit 1
        if args.debug:
            raise
        print(f"deblurdiff {args.command}: failed: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
