"""``robust-transfer``: the command line over the ``transfer`` and ``interp`` APIs."""

from __future__ import annotations

import argparse
import sys

from cli import interp_commands, transfer_commands, viz_commands

PROG = "robust-transfer"


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr and exit code 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Fine-tune natural and robust source networks and explain them.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    transfer_commands.register(sub)
    interp_commands.register(sub)
    viz_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from interp.errors import InterpError
    from transfer.errors import UserError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported in one line
        return int(exc.code or 0)
    try:
        args.func(args)
    except (UserError, InterpError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished epochs are saved, continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
