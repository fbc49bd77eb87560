"""The mmapipc command line: write, read, watch, dump and demo.

Errors are one line on stderr naming the command, the path and the reason, with a
non-zero exit status; Ctrl-C and SIGTERM end a loop cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, NoReturn, Optional, Sequence

from mmapipc import loops
from mmapipc.mapping import Reader
from mmapipc.record import OFFSETS, PADDING, RECORD_SIZE, Student

PROG = "mmapipc"
EXIT_USAGE = 2


class _Terminated(Exception):
    """SIGTERM arrived: unwind so every mapping is released."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Exchange C structs with C programs through a MAP_SHARED file.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    w = sub.add_parser("write", help="write a record every interval, as mmap_w does")
    w.add_argument("file")
    w.add_argument("--id", type=_int, default=10, help="first id (default 10)")
    w.add_argument("--name", default="xiaoming", help="name (default xiaoming)")
    w.add_argument("--sex", default="m", help="one byte (default m)")
    w.add_argument("--interval", type=_seconds, default=1.0, help="seconds (default 1)")
    w.add_argument("--count", type=_count, default=None, help="records (default: forever)")
    w.add_argument("--force", action="store_true", help="shrink a longer existing file")
    w.add_argument("--follow-symlinks", action="store_true", help="open through a symlink")
    w.add_argument("--sync", action="store_true", help="msync after every record")

    r = sub.add_parser("read", help="print the record every interval, as mmap_r does")
    r.add_argument("file")
    r.add_argument("--interval", type=_seconds, default=2.0, help="seconds (default 2)")
    r.add_argument("--count", type=_count, default=None, help="lines (default: forever)")
    r.add_argument("--json", action="store_true", help="print JSON Lines")
    r.add_argument("--wait", action="store_true", help="wait for the file to hold a record")

    wa = sub.add_parser("watch", help="print the record, then every change once")
    wa.add_argument("file")
    wa.add_argument("--count", type=_count, default=None, help="stop after N lines")
    wa.add_argument("--timeout", type=_seconds, default=None,
                    help="stop after SEC seconds without a change")
    wa.add_argument("--json", action="store_true", help="print JSON Lines")
    wa.add_argument("--wait", action="store_true", help="wait for the file to hold a record")
    wa.add_argument("--busy", action="store_true", help="spin on a core for the lowest latency")

    d = sub.add_parser("dump", help="print the record once, decoded and in hex")
    d.add_argument("file")

    de = sub.add_parser("demo", help="show writers and readers talking, C and Python")
    de.add_argument("--seconds", type=_seconds, default=4.0,
                    help="how long each pairing runs (default 4)")
    return parser


def _cmd_write(args: argparse.Namespace) -> int:
    first = Student(args.id, args.name, args.sex)
    loops.write_loop(
        args.file, first, args.interval, args.count, sync=args.sync,
        force=args.force, follow_symlinks=args.follow_symlinks,
    )
    return 0


def _cmd_read(args: argparse.Namespace) -> int:
    fmt = loops.json_line if args.json else loops.c_line
    loops.read_loop(args.file, args.interval, args.count, format=fmt, wait=args.wait)
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    fmt = loops.json_line if args.json else loops.c_line
    loops.watch_loop(args.file, args.count, args.timeout, format=fmt, wait=args.wait,
                     busy=args.busy)
    return 0


def dump_text(record: Student, raw: bytes) -> str:
    """The record decoded, then its bytes in hex by field with their offsets."""
    spans = [("id", OFFSETS["id"], 4), ("name", OFFSETS["name"], 20),
             ("sex", OFFSETS["sex"], 1), ("padding", PADDING[0], PADDING[1])]
    lines = [f"id={record.id}\tname={record.name!r}\tsex={record.sex!r}",
             f"{'offset':>6}  {'field':<8} bytes"]
    for field, off, size in spans:
        lines.append(f"{off:>6}  {field:<8} {raw[off:off + size].hex(' ')}")
    lines.append(f"{RECORD_SIZE:>6}  (size)")
    return "\n".join(lines) + "\n"


def _cmd_dump(args: argparse.Namespace) -> int:
    with Reader(args.file) as reader:
        record = reader.read()
        raw = reader.raw_bytes()
    loops.emit(sys.stdout, dump_text(record, raw).encode("utf-8", "surrogateescape"))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mmapipc.demo import run_demo

    return run_demo(args.seconds, sys.stdout)


COMMANDS = {
    "write": _cmd_write,
    "read": _cmd_read,
    "watch": _cmd_watch,
    "dump": _cmd_dump,
    "demo": _cmd_demo,
}


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = exc.strerror or str(exc)
        return f"{exc.filename}: {reason}"
    return str(exc) or type(exc).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = f"{PROG} {args.command}"
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except _Terminated:
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        # The reader of our output went away: leave quietly, as a C program killed by
        # SIGPIPE would, without a traceback at interpreter exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (OSError, ValueError, TypeError) as exc:
        sys.stderr.write(f"{command}: {_describe(exc)}\n")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
