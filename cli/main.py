"""``robust-transfer``: the command line over the ``transfer`` and ``interp`` APIs."""

from __future__ import annotations

import argparse
import errno
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
    transfer_commands.register(sub)
    interp_commands.register(sub)
    viz_commands.register(sub)
    study_commands.register(sub)
    demo.register(sub)
    return parser


def os_error_message(exc: OSError) -> str:
    """One line for a failure of the file system: the path, the reason and what to do."""
    path = exc.filename if exc.filename is not None else "a file"
    hints = {
        errno.ENOSPC: "the disk is full: free some space or write elsewhere",
        errno.EDQUOT: "the disk quota is exhausted: free some space or write elsewhere",
        errno.EFBIG: "the file is larger than this process may write (ulimit -f): raise the limit or write elsewhere",
        errno.EACCES: "permission denied: choose a place you can write to",
        errno.EPERM: "operation not permitted: choose a place you can write to",
        errno.EROFS: "the file system is read-only: write elsewhere",
        errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
        errno.EISDIR: "it is a directory, a file was expected: choose another path",
        errno.ENOENT: "no such file or directory: check the path",
        errno.EEXIST: "it exists already and is in the way: choose another path",
    }
    reason = hints.get(exc.errno, exc.strerror or type(exc).__name__)
    return f"cannot use {path}: {reason}"


def main(argv: list[str] | None = None) -> int:
    """Run one command; expected failures end in one line on stderr and a non-zero exit code.

    User mistakes and ``interp`` errors exit 2, file-system failures (full disk, permissions,
    paths in the way) and running out of memory exit 1, an interrupt 130 and a closed output
    pipe (``robust-transfer datasets | head``) 141, silently, as a command killed by SIGPIPE.
    Anything else is a bug and keeps its traceback.
    """
    from interp.errors import InterpError
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
