"""``robust-transfer``: the command line over the ``transfer`` and ``interp`` APIs."""

from __future__ import annotations

import argparse
import os
import sys

from cli import demo, interp_commands, study_commands, transfer_commands, viz_commands

PROG = "robust-transfer"


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr and exit code 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Fine-tune natural and robust source networks and explain them.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    # what Ctrl-C leaves behind; commands that can continue a run say so themselves
    parser.set_defaults(on_interrupt="nothing incomplete was kept; run the command again")
    parser.set_defaults(run_command=main)  # how a command that runs others (the demo) runs them, in-process
    transfer_commands.register(sub)
    interp_commands.register(sub)
    viz_commands.register(sub)
    study_commands.register(sub)
    demo.register(sub)
    return parser


def os_error_message(exc: OSError) -> str:
    """One line for a failure of the file system (see :func:`transfer.files.describe_os_error`)."""
    from transfer.files import describe_os_error

    return describe_os_error(exc)


def main(argv: list[str] | None = None) -> int:
    """Run one command; expected failures end in one line on stderr and a non-zero exit code.

    User mistakes and ``interp`` errors exit 2, file-system failures (full disk, permissions,
    paths in the way) and running out of memory exit 1, an interrupt 130 and a closed output
    pipe (``robust-transfer datasets | head``) 141, silently, as a command killed by SIGPIPE.
    Anything else is a bug and keeps its traceback.
    """
    from interp import InterpError
    from transfer.errors import UserError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported in one line
        return int(exc.code or 0)
    try:
        args.func(args)
        sys.stdout.flush()
    except (UserError, InterpError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away: point stdout at /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        print(f"{PROG}: error: {os_error_message(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{PROG}: error: out of memory; use fewer images or a smaller --batch-size", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {args.on_interrupt}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
