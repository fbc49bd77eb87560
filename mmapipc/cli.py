"""The mmapipc command line: write, read, watch, dump, layout, cflags and demo.

Errors are one line on stderr naming the command, the path and the reason, with a
non-zero exit status; Ctrl-C and SIGTERM end a loop cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from mmapipc import __version__, loops
from mmapipc.errors import not_regular
from mmapipc.mapping import IDLE_GAP, MAX_GAP, Reader
from mmapipc.record import STUDENT, Student

if TYPE_CHECKING:
    from mmapipc.layout import Layout

PROG = "mmapipc"
EXIT_USAGE = 2
MAX_HEADER_BYTES = 256 << 20  # room for an object file with debug information too


class _Terminated(Exception):
    """SIGTERM arrived: unwind so every mapping is released."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, named after the command that has them."""

    def error(self, message: str) -> NoReturn:
        _say(f"{self.prog}: {message} (see {self.prog} --help)")
        sys.exit(EXIT_USAGE)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """As argparse's, but an unknown option is reported by its command's parser."""
        parsed, rest = self.parse_known_args(args, namespace)
        commands = self._commands
        name = getattr(parsed, "command", None)
        if rest:
            commands.get(name or "", self).error(f"unrecognized arguments: {' '.join(rest)}")
        if commands and name is None:
            self.error("the following arguments are required: COMMAND")
        return parsed

    @property
    def _commands(self) -> dict[str, _Parser]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= loops.MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds from 0 to {loops.MAX_SECONDS:.0f} (a year): {text!r}")
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


_READ_FILE = "the shared file, written by mmap_w or mmapipc write"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Exchange C structs with C programs through a MAP_SHARED file.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = False  # checked after unknown options, which are named first

    w = sub.add_parser("write", help="write a record every interval, as mmap_w does")
    w.add_argument("file", metavar="FILE",
                   help="the shared file (created with mode 0664 if missing)")
    w.add_argument("--id", type=_int, metavar="N", default=None, help="first id (default 10)")
    w.add_argument("--name", metavar="S", default=None, help="name (default xiaoming)")
    w.add_argument("--sex", metavar="C", default=None, help="one byte (default m)")
    w.add_argument("--interval", type=_seconds, metavar="SEC", default=1.0,
                   help="seconds (default 1)")
    w.add_argument("--count", type=_count, metavar="N", default=None,
                   help="records (default: forever)")
    w.add_argument("--force", action="store_true", help="shrink a longer existing file")
    w.add_argument("--follow-symlinks", action="store_true", help="open through a symlink")
    w.add_argument("--sync", action="store_true", help="msync after every record")
    _struct_options(w)
    w.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="with --struct: a field's value (nested as a.b, an element as a[1],"
                        " arrays as 1,2,3); repeatable; fields not set are zero")
    w.add_argument("--increment", metavar="FIELD", default=None,
                   help="with --struct: the integer field to add 1 to after every record"
                        " (wrapping at its C range)")

    r = sub.add_parser("read", help="print the record every interval, as mmap_r does")
    r.add_argument("file", metavar="FILE", help=_READ_FILE)
    r.add_argument("--interval", type=_seconds, metavar="SEC", default=2.0,
                   help="seconds (default 2)")
    r.add_argument("--count", type=_count, metavar="N", default=None,
                   help="lines (default: forever)")
    _output_options(r)
    r.add_argument("--wait", action="store_true", help="wait for the file to hold a record")
    _struct_options(r)

    wa = sub.add_parser("watch", help="print the record, then every change once")
    wa.add_argument("file", metavar="FILE", help=_READ_FILE)
    wa.add_argument("--count", type=_count, metavar="N", default=None, help="stop after N lines")
    wa.add_argument("--timeout", type=_seconds, metavar="SEC", default=None,
                    help="stop after SEC seconds without a change")
    _output_options(wa)
    wa.add_argument("--wait", action="store_true", help="wait for the file to hold a record")
    wa.add_argument("--busy", action="store_true", help="spin on a core for the lowest latency")
    wa.add_argument("--max-gap", type=_seconds, metavar="SEC", default=MAX_GAP,
                    help="while the writer is active, look at least every SEC seconds, so that"
                         f" every change that stays that long is seen (default {MAX_GAP:g})")
    wa.add_argument("--idle-gap", type=_seconds, metavar="SEC", default=IDLE_GAP,
                    help="after a silence, look every SEC seconds (default"
                         f" {IDLE_GAP:g})")
    _struct_options(wa)

    d = sub.add_parser("dump", help="print the record once, decoded and in hex")
    d.add_argument("file", metavar="FILE", help="the shared file")
    _struct_options(d)

    la = sub.add_parser("layout", help="print how the C compiler lays out a struct")
    la.add_argument("header", metavar="HEADER",
                    help="C header (or any file) declaring the struct")
    la.add_argument("struct", metavar="STRUCT",
                    help="the struct: 'struct name', its tag, or a typedef name")
    la.add_argument("--check", action="store_true",
                    help="compile a probe with the C compiler and compare every offset")
    la.add_argument("--cc", metavar="CC", default=None,
                    help="C compiler command (default: $CC, cc, gcc or clang; flags $CFLAGS)")
    la.add_argument("--json", action="store_true",
                    help="print the layout as JSON: name, size, align, source, fields")
    la.add_argument("--c", action="store_true", dest="c_defines",
                    help="print #defines for mmapipc_record.h: the size, marker and seq offsets")
    _compiler_options(la)

    sub.add_parser("cflags", help="print the compiler flag that finds mmapipc_record.h")

    de = sub.add_parser("demo", help="show writers and readers talking, C and Python")
    de.add_argument("--seconds", type=_seconds, metavar="SEC", default=4.0,
                    help="how long the pairs run once every reader has printed (default 4)")
    _bridge_parser(sub)
    return parser


def _bridge_parser(sub: Any) -> None:
    br = sub.add_parser("bridge", help="carry a record to another host over Zenoh")
    actions = br.add_subparsers(dest="bridge_command", metavar="ACTION", parser_class=_Parser,
                                help="publish (where the writer runs) or subscribe")
    actions.required = True
    for name, text in (("publish", "watch FILE and publish every changed record to KEY"),
                       ("subscribe", "write every record received on KEY into FILE")):
        p = actions.add_parser(name, help=text)
        p.add_argument("file")
        p.add_argument("--key", required=True, help="the Zenoh key expression, e.g. robot/stu")
        p.add_argument("--listen", action="append", default=[], metavar="ENDPOINT",
                       help="listen on ENDPOINT, e.g. tcp/0.0.0.0:7447 (repeatable)")
        p.add_argument("--connect", action="append", default=[], metavar="ENDPOINT",
                       help="connect to ENDPOINT, e.g. tcp/192.0.2.1:7447 (repeatable)")
        p.add_argument("--mode", choices=("peer", "client"), default=None,
                       help="Zenoh mode (default peer; client needs a zenohd router)")
        p.add_argument("--config", metavar="ZENOH_JSON5", default=None,
                       help="a Zenoh configuration file; the options above override it")
        p.add_argument("--stats", type=_seconds, nargs="?", const=1.0, default=None,
                       metavar="SEC", help="print the counters as a JSON line every SEC"
                                           " seconds (default 1) and on exit")
        p.add_argument("--count", type=_count, default=None, help="stop after N records")
        p.add_argument("--timeout", type=_seconds, default=None,
                       help="stop after SEC seconds without a record")
        if name == "subscribe":
            p.add_argument("--force", action="store_true",
                           help="shrink a longer existing file")
            p.add_argument("--follow-symlinks", action="store_true",
                           help="open through a symlink")
        _struct_options(p)


def _struct_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--struct-file", metavar="HEADER", default=None,
                   help="C header declaring the record's struct (instead of struct STU)")
    p.add_argument("--struct", metavar="NAME", default=None,
                   help="the struct in --struct-file: 'struct name', its tag or a typedef")
    _compiler_options(p)


def _compiler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-I", "--include-dir", action="append", default=[], metavar="DIR",
                   help="a directory the C compiler searches for the header's includes")
    p.add_argument("-D", "--define", action="append", default=[], metavar="NAME[=VALUE]",
                   help="a macro defined for the C compiler while laying out the struct")


def _output_options(p: argparse.ArgumentParser) -> None:
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON Lines")
    out.add_argument("--format", metavar="TEMPLATE", default=None,
                     help="a Python format string over the fields, e.g. '{id} {pos.x}'"
                          " ({a.b} for a nested field, {a[1]} for an element)")


def _layout(args: argparse.Namespace) -> Layout | None:
    """The layout named by --struct-file/--struct, or None for struct STU."""
    if args.struct_file is None and args.struct is None:
        return None
    if args.struct_file is None:
        raise ValueError("--struct needs --struct-file HEADER")
    if args.struct is None:
        raise ValueError("--struct-file needs --struct NAME")
    from mmapipc.layout import Layout

    _check_header(args.struct_file)
    return Layout.from_file(args.struct_file, args.struct, include_dirs=args.include_dir,
                            defines=args.define)


def _check_header(path: str) -> None:
    """A header must be a regular file of a sane size: reading /dev/zero or a FIFO would
    never end, or end only when memory does."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise not_regular(path)
    if info.st_size > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: {info.st_size} bytes, more than the"
                         f" {MAX_HEADER_BYTES >> 20} MiB read for a struct declaration")


def _formatter(args: argparse.Namespace, layout: Layout | None) -> loops.Formatter:
    codec = layout if layout is not None else STUDENT
    if args.json:
        return codec.json_line
    if args.format is not None:
        return codec.formatter(args.format)
    return codec.line


def _cmd_write(args: argparse.Namespace) -> int:
    layout = _layout(args)
    if layout is None:
        if args.set or args.increment:
            raise ValueError("--set and --increment need --struct-file and --struct")
        first: Any = Student(10 if args.id is None else args.id,
                             "xiaoming" if args.name is None else args.name,
                             "m" if args.sex is None else args.sex)
        loops.write_loop(
            args.file, first, args.interval, args.count, sync=args.sync,
            force=args.force, follow_symlinks=args.follow_symlinks,
        )
        return 0
    stu = [f"--{k}" for k in ("id", "name", "sex") if getattr(args, k) is not None]
    if stu:
        raise ValueError(f"{', '.join(stu)}: for struct STU only; with --struct use"
                         " --set FIELD=VALUE")
    first = layout.from_assignments(args.set)
    step = layout.incrementer(args.increment) if args.increment else _same
    loops.write_loop(
        args.file, first, args.interval, args.count, step=step, sync=args.sync,
        force=args.force, follow_symlinks=args.follow_symlinks, layout=layout,
    )
    return 0


def _same(record: Any) -> Any:
    return record


def _cmd_read(args: argparse.Namespace) -> int:
    layout = _layout(args)
    fmt = _formatter(args, layout)
    loops.read_loop(args.file, args.interval, args.count, format=fmt, wait=args.wait,
                    notify=_notify(args), layout=layout)
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    layout = _layout(args)
    fmt = _formatter(args, layout)
    loops.watch_loop(args.file, args.count, args.timeout, format=fmt, wait=args.wait,
                     notify=_notify(args), busy=args.busy, layout=layout,
                     max_gap=args.max_gap, idle_gap=args.idle_gap)
    return 0


def _cmd_dump(args: argparse.Namespace) -> int:
    layout = _layout(args)
    codec = layout if layout is not None else STUDENT
    reader: Reader[Any] = Reader(args.file, layout=codec)
    with reader:
        record = reader.read()
        raw = reader.raw_bytes()
    loops.emit(sys.stdout, codec.dump(record, raw))
    return 0


def _cmd_layout(args: argparse.Namespace) -> int:
    from mmapipc.layout import Layout
    from mmapipc.peers import CompilerError, find_compiler

    if args.c_defines and args.json:
        raise ValueError("--c and --json: choose one")
    _check_header(args.header)
    layout = Layout.from_file(args.header, args.struct, include_dirs=args.include_dir,
                              defines=args.define, cc=args.cc)
    if args.check:
        try:
            cc = args.cc or find_compiler()
        except CompilerError as e:
            raise ValueError(str(e)) from None
        if not cc:
            raise ValueError("--check needs a C compiler (set CC, or install cc/gcc/clang)")
        report = layout.check(cc if args.cc else None)
    if args.c_defines:
        loops.emit(sys.stdout, _c_defines(layout).encode("utf-8", "surrogateescape"))
    elif args.json:
        loops.emit(sys.stdout, layout.to_json().encode("utf-8", "surrogateescape"))
    else:
        loops.emit(sys.stdout, layout.table().encode("utf-8", "surrogateescape"))
    if args.check:
        machine = args.json or args.c_defines  # output for tools: the report goes to stderr
        loops.emit(sys.stderr if machine else sys.stdout, f"check: {report}\n".encode())
    return 0


def _c_defines(layout: Layout) -> str:
    """#defines naming a struct's size and lock offsets, for mmapipc_rec_open()."""
    name = layout.name.split()[-1] if layout.name.split() else layout.name
    prefix = "".join(c if c.isascii() and c.isalnum() else "_" for c in name).upper()
    if not prefix or prefix[0].isdigit():
        prefix = "_" + prefix
    if layout.lock_offsets is None:
        raise ValueError(f"{layout.name}: no run of 3 padding bytes for the seq lock"
                         " (open it with marker and seq offsets -1, -1: readers compare copies)")
    marker, seq = layout.lock_offsets
    return (f"#define {prefix}_SIZE {layout.size}\n#define {prefix}_MARKER {marker}\n"
            f"#define {prefix}_SEQ {seq}\n")


def _cmd_cflags(args: argparse.Namespace) -> int:
    from mmapipc import get_include

    loops.emit(sys.stdout, f"-I{get_include()}\n".encode("utf-8", "surrogateescape"))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mmapipc.demo import run_demo

    return run_demo(args.seconds, sys.stdout)


def _cmd_bridge(args: argparse.Namespace) -> int:
    """bridge publish/subscribe: events and the summary on stderr, --stats on stdout."""
    import json

    from mmapipc import bridge
    from mmapipc._base import MmapipcError

    command = f"{PROG} bridge {args.bridge_command}"
    side: bridge.BridgePublisher | bridge.BridgeSubscriber | None = None

    def event(ev: bridge.Event) -> None:
        _say(f"{command}: {ev.message}")

    def stats_line() -> None:
        if side is not None:
            counters = (side.stats.as_dict() if isinstance(side, bridge.BridgeSubscriber)
                        else dict(vars(side.stats)))
            loops.emit(sys.stdout, (json.dumps(counters) + "\n").encode())

    try:
        layout = _layout(args)
        common: dict[str, Any] = dict(
            layout=layout, config=args.config, mode=args.mode, listen=args.listen,
            connect=args.connect, on_event=event)
        if args.bridge_command == "publish":
            side = bridge.BridgePublisher(args.file, args.key, **common)
        else:
            side = bridge.BridgeSubscriber(args.file, args.key, force=args.force,
                                           follow_symlinks=args.follow_symlinks, **common)
    except (OSError, ValueError, TypeError, MmapipcError) as exc:
        _say(f"{command}: {bridge.describe(exc)}")
        return 1
    failed = False
    with side:
        try:
            side.run(count=args.count, timeout=args.timeout,
                     on_tick=stats_line if args.stats else None, tick=args.stats or 1.0)
        except (OSError, ValueError, TypeError, MmapipcError) as exc:
            failed = True
            _say(f"{command}: {bridge.describe(exc)}")
            return 1
        finally:
            if not failed:  # ended by count, timeout, Ctrl-C or SIGTERM: say what was done
                if args.stats is not None:
                    stats_line()
                _say(f"{command}: {_bridge_summary(side)}")
    return 0


def _bridge_summary(side: Any) -> str:
    s = side.stats
    if hasattr(s, "published"):
        return f"{s.published} records published"
    return (f"{s.written} records written of {s.received} received; {s.gaps} gaps"
            f" ({s.lost} lost), {s.refused} refused, {s.publishers} publishers")


COMMANDS = {
    "write": _cmd_write,
    "read": _cmd_read,
    "watch": _cmd_watch,
    "dump": _cmd_dump,
    "layout": _cmd_layout,
    "cflags": _cmd_cflags,
    "demo": _cmd_demo,
    "bridge": _cmd_bridge,
}


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _notify(args: argparse.Namespace) -> Callable[[str], None]:
    """Say a loop's note on stderr as every other message is said: 'mmapipc CMD: ...'."""
    return lambda message: _say(f"{PROG} {args.command}: {message}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, IsADirectoryError) and exc.filename:
        # As the reader says it (it opens a directory, then finds what it is).
        return f"{exc.filename}: is a directory, not a regular file"
    if isinstance(exc, OSError) and exc.filename:
        reason = exc.strerror or str(exc)
        return f"{exc.filename}: {reason}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _say(line: str) -> None:
    """One line on stderr; a path that is not UTF-8 comes out as its own bytes."""
    loops.emit(sys.stderr, (line + "\n").encode("utf-8", "surrogateescape"))


def main(argv: Sequence[str] | None = None) -> int:
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
        _say(f"{command}: {_describe(exc)}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
