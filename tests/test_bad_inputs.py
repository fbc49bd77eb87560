"""Bad inputs: every path, file size and field either works as documented or gives a clear
error, and whatever was there before a refusal is still there, byte for byte.

Each path case runs through the API (Writer, Reader) and the CLI (write, read).  The encoding
of struct STU is checked against a C encoder compiled from csrc/mmapipc.h.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_error, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmapipc import (
    RECORD_SIZE,
    FileTooShortError,
    NotRegularFileError,
    Reader,
    Student,
    SymlinkError,
    WouldShrinkError,
    Writer,
)

NOBODY = 65534
WRITTEN = Student(42, "ok", "f")  # what the writer cases store
SIZES = (0, 1, 27, 28, 29, 4096)


def pattern(n: int) -> bytes:
    """Recognisable file content; byte 25 is not the seq lock marker (0xA5)."""
    return bytes((i * 37 + 11) % 256 for i in range(n))


assert pattern(28)[25] != 0xA5


# ---- file system snapshots ------------------------------------------------------------

Entry = tuple[str, bytes | str | None]


def snapshot(root: Path) -> dict[str, Entry]:
    """Every entry under root: its kind and its content (file bytes, link target)."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            mode = p.lstat().st_mode
            key = str(p.relative_to(root))
            if stat.S_ISLNK(mode):
                out[key] = ("link", os.readlink(p))
            elif stat.S_ISREG(mode):
                out[key] = ("file", p.read_bytes())
            elif stat.S_ISDIR(mode):
                out[key] = ("dir", None)
            elif stat.S_ISFIFO(mode):
                out[key] = ("fifo", None)
            elif stat.S_ISSOCK(mode):
                out[key] = ("socket", None)
            else:
                out[key] = ("other", None)
    return out


# ---- the path table -------------------------------------------------------------------

Expect = tuple[type[BaseException], str] | None  # None: works; else (class, text in message)


@dataclass(frozen=True)
class Case:
    """A path made fresh in an empty directory, and what Writer and Reader must do with it."""

    id: str
    make: Callable[[Path], str]
    writer: Expect
    reader: Expect
    content: bytes | None = None  # what a working reader must see (first 28 bytes)
    cli: bool = True  # argv cannot carry every path (a NUL byte)


def _file(n: int) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        (d / f"size{n}").write_bytes(pattern(n))
        return str(d / f"size{n}")

    return make


def _dir(d: Path) -> str:
    (d / "adir").mkdir()
    return str(d / "adir")


def _fifo(d: Path) -> str:
    os.mkfifo(d / "fifo")
    return str(d / "fifo")


def _socket(d: Path) -> str:
    path = d / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    return str(path)


def _symlink(d: Path) -> str:
    (d / "target").write_bytes(pattern(28))
    (d / "link").symlink_to("target")
    return str(d / "link")


def _dangling(d: Path) -> str:
    (d / "link").symlink_to("nothing-here")
    return str(d / "link")


def _non_utf8(d: Path) -> str:
    path = os.fsdecode(os.fsencode(str(d)) + b"/\xff\xfe.bin")
    Path(path).write_bytes(pattern(28))
    return path


def _sized_cases() -> list[Case]:
    cases = []
    for n in SIZES:
        writer: Expect = None if n <= RECORD_SIZE else (WouldShrinkError, f"file is {n} bytes")
        reader: Expect = None if n >= RECORD_SIZE else (FileTooShortError, "shorter than the 28")
        content = pattern(n)[:RECORD_SIZE] if n >= RECORD_SIZE else None
        cases.append(Case(f"size{n}", _file(n), writer, reader, content))
    return cases


CASES = [
    Case("empty-path", lambda d: "", (FileNotFoundError, "empty path"),
         (FileNotFoundError, "empty path")),
    Case("nul-byte", lambda d: str(d / "a\0b"), (ValueError, "NUL"), (ValueError, "NUL"),
         cli=False),
    Case("missing-dir", lambda d: str(d / "nodir" / "f"),
         (FileNotFoundError, "No such file or directory"),
         (FileNotFoundError, "No such file or directory")),
    Case("directory", _dir, (OSError, "directory"), (NotRegularFileError, "directory")),
    Case("fifo", _fifo, (NotRegularFileError, "FIFO"), (NotRegularFileError, "FIFO")),
    Case("socket", _socket, (NotRegularFileError, "socket"), (NotRegularFileError, "socket")),
    Case("dev-null", lambda d: os.devnull, (NotRegularFileError, "character device"),
         (NotRegularFileError, "character device")),
    Case("symlink", _symlink, (SymlinkError, "symlink"), None, pattern(28)),
    Case("dangling-symlink", _dangling, (SymlinkError, "symlink"),
         (FileNotFoundError, "No such file or directory")),
    Case("non-utf8-path", _non_utf8, None, None, pattern(28)),
    *_sized_cases(),
]


@pytest.fixture()
def no_hang() -> Iterator[None]:
    """Turn a blocked open (a FIFO waiting for its other end) into a failure, not a hang."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError("blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 20)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_refused(exc: BaseException, expect: tuple[type[BaseException], str], path: str) -> None:
    cls, text = expect
    assert isinstance(exc, cls), f"{type(exc).__name__}: {exc} (expected {cls.__name__})"
    reason = str(exc).replace(path, "") if path else str(exc)  # the path may hold any word
    assert text.lower() in reason.lower(), f"{text!r} not in {exc}"
    if isinstance(exc, OSError) and path:
        assert exc.filename == path, f"error names {exc.filename!r}, not {path!r}"


def _after_write(path: str, before: dict[str, Entry], root: Path) -> None:
    """A writer that worked left exactly one record, the one written, in a 28-byte file."""
    real = Path(os.path.realpath(path))
    data = real.read_bytes()
    assert len(data) == RECORD_SIZE
    assert Student.from_bytes(data) == WRITTEN
    assert data[:25] == WRITTEN.to_bytes()[:25]
    after = snapshot(root)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed <= {str(real.relative_to(root))}, f"other entries changed: {changed}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_writer_api(case: Case, tmp_path: Path, no_hang: None) -> None:
    root = tmp_path / "case"
    root.mkdir()
    path = case.make(root)
    before = snapshot(root)
    kind_before = os.stat(path).st_mode if os.path.exists(path) else None
    fds = _fd_count()
    if case.writer is None:
        with Writer(path) as w:
            w.write(WRITTEN)
        _after_write(path, before, root)
    else:
        with pytest.raises(BaseException) as info:
            Writer(path)
        _check_refused(info.value, case.writer, path)
        assert snapshot(root) == before, "a refused writer changed the directory"
        if kind_before is not None:
            assert stat.S_IFMT(os.stat(path).st_mode) == stat.S_IFMT(kind_before)
    assert _fd_count() == fds, "a descriptor leaked"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reader_api(case: Case, tmp_path: Path, no_hang: None) -> None:
    root = tmp_path / "case"
    root.mkdir()
    path = case.make(root)
    before = snapshot(root)
    fds = _fd_count()
    if case.reader is None:
        assert case.content is not None
        with Reader(path) as r:
            assert r.read() == Student.from_bytes(case.content)
            assert r.read_raw() == Student.from_bytes(case.content)
    else:
        with pytest.raises(BaseException) as info:
            Reader(path)
        _check_refused(info.value, case.reader, path)
    assert snapshot(root) == before, "a reader changed the directory"
    assert _fd_count() == fds, "a descriptor leaked"


CLI_CASES = [c for c in CASES if c.cli]


def _reason(line: str, path: str) -> str:
    """The error line without the path (which may hold any word), lowercased."""
    shown = os.fsencode(path).decode("utf-8", "replace")
    return (line.replace(shown, "") if shown else line).lower()


def _cli_path(path: str) -> bytes:
    return os.fsencode(path)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_writer_cli(case: Case, tmp_path: Path) -> None:
    root = tmp_path / "case"
    root.mkdir()
    path = case.make(root)
    before = snapshot(root)
    proc = run_cli("write", _cli_path(path), "--count", "1", "--interval", "0",
                   "--id", "42", "--name", "ok", "--sex", "f")
    if case.writer is None:
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == b""
        _after_write(path, before, root)
    else:
        line = assert_clean_error(proc, "mmapipc write")
        assert case.writer[1].lower() in _reason(line, path), line
        assert snapshot(root) == before, "a refused writer changed the directory"


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_reader_cli(case: Case, tmp_path: Path) -> None:
    root = tmp_path / "case"
    root.mkdir()
    path = case.make(root)
    before = snapshot(root)
    proc = run_cli("read", _cli_path(path), "--count", "1", "--interval", "0")
    if case.reader is None:
        assert case.content is not None
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == Student.from_bytes(case.content).c_line()
    else:
        line = assert_clean_error(proc, "mmapipc read")
        assert case.reader[1].lower() in _reason(line, path), line
    assert snapshot(root) == before, "a reader changed the directory"


def test_reader_wait_does_not_hang_on_a_fifo(tmp_path: Path, no_hang: None) -> None:
    """A FIFO never becomes a record: waiting for it is refused at once, not forever."""
    path = _fifo(tmp_path)
    with pytest.raises(NotRegularFileError, match="FIFO"):
        Reader(path, wait=True)
    proc = run_cli("read", path, "--wait", "--count", "1")
    assert_clean_error(proc, "FIFO")


def test_reader_wait_for_a_short_file_times_out_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(pattern(27))
    with pytest.raises(FileTooShortError, match="27 bytes"):
        Reader(path, wait=True, wait_timeout=0.2)
    assert path.read_bytes() == pattern(27)


@pytest.mark.parametrize("n", [29, 4096])
def test_force_lets_the_writer_shrink(n: int, tmp_path: Path) -> None:
    path = tmp_path / "long"
    path.write_bytes(pattern(n))
    with Writer(path, force=True) as w:
        w.write(WRITTEN)
    assert Student.from_bytes(path.read_bytes()) == WRITTEN
    path.write_bytes(pattern(n))
    proc = run_cli("write", path, "--force", "--count", "1", "--id", "42", "--name", "ok",
                   "--sex", "f")
    assert proc.returncode == 0, proc.stderr
    assert Student.from_bytes(path.read_bytes()) == WRITTEN


@pytest.mark.parametrize("dangling", [False, True], ids=["symlink", "dangling-symlink"])
def test_follow_symlinks_writes_through(dangling: bool, tmp_path: Path) -> None:
    """Told to follow, the writer writes the link's target and leaves the link a link."""
    for variant in ("api", "cli"):
        root = tmp_path / variant
        root.mkdir()
        link = _dangling(root) if dangling else _symlink(root)
        target = root / os.readlink(link)
        if variant == "api":
            with Writer(link, follow_symlinks=True) as w:
                w.write(WRITTEN)
        else:
            proc = run_cli("write", link, "--follow-symlinks", "--count", "1", "--id", "42",
                           "--name", "ok", "--sex", "f")
            assert proc.returncode == 0, proc.stderr
        assert Path(link).is_symlink()
        assert Student.from_bytes(target.read_bytes()) == WRITTEN


# ---- permissions, run as an unprivileged user -------------------------------------------


@pytest.fixture()
def open_dir() -> Iterator[Path]:
    """A directory that uid 65534 can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="mmapipc-perm-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


# The interpreter lives where uid 65534 cannot reach it, so the child starts as root, loads
# what it needs, then drops to uid/gid 65534 before touching the file.
AS_NOBODY = f"""
import json, locale, os, sys
import mmapipc.cli
from mmapipc import Reader, Student, Writer
mmapipc.cli.build_parser().parse_args(["read", "x"])  # argparse's lazy imports, done now
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
"""

AS_NOBODY_API = AS_NOBODY + """
kind, path = sys.argv[1], sys.argv[2]
try:
    if kind == "writer":
        with Writer(path) as w:
            w.write(Student(42, "ok", "f"))
        out = {"ok": True}
    else:
        with Reader(path) as r:
            out = {"ok": True, "record": r.read().to_bytes().hex()}
except Exception as e:
    out = {"ok": False, "type": type(e).__name__, "msg": str(e),
           "filename": getattr(e, "filename", None)}
print(json.dumps(out))
"""

AS_NOBODY_CLI = AS_NOBODY + """
sys.exit(mmapipc.cli.main(sys.argv[1:]))
"""


def _nobody_api(kind: str, path: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", AS_NOBODY_API, kind, str(path)],
                          capture_output=True, timeout=30, cwd="/", check=False)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _nobody_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", AS_NOBODY_CLI, *args], capture_output=True,
                          timeout=30, cwd="/", check=False)


def test_read_only_file_refused_to_the_writer(open_dir: Path) -> None:
    path = open_dir / "ro.bin"
    path.write_bytes(pattern(28))
    path.chmod(0o444)
    out = _nobody_api("writer", path)
    assert out["ok"] is False and out["type"] == "PermissionError", out
    assert out["filename"] == str(path)
    proc = _nobody_cli("write", str(path), "--count", "1")
    assert_clean_error(proc, str(path), "Permission denied")
    assert path.read_bytes() == pattern(28)
    # Reading needs no write permission.
    out = _nobody_api("reader", path)
    assert out == {"ok": True, "record": Student.from_bytes(pattern(28)).to_bytes().hex()}, out
    proc = _nobody_cli("read", str(path), "--count", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == Student.from_bytes(pattern(28)).c_line()


def test_unwritable_directory_refused_to_the_writer(open_dir: Path) -> None:
    path = open_dir / "new.bin"
    out = _nobody_api("writer", path)
    assert out["ok"] is False and out["type"] == "PermissionError", out
    proc = _nobody_cli("write", str(path), "--count", "1")
    assert_clean_error(proc, str(path), "Permission denied")
    assert not path.exists()


def test_unreadable_file_refused_to_the_reader(open_dir: Path) -> None:
    path = open_dir / "secret.bin"
    path.write_bytes(pattern(28))
    path.chmod(0o600)
    out = _nobody_api("reader", path)
    assert out["ok"] is False and out["type"] == "PermissionError", out
    proc = _nobody_cli("read", str(path), "--count", "1")
    assert_clean_error(proc, str(path), "Permission denied")
    assert path.read_bytes() == pattern(28)


# ---- modes and descriptors ----------------------------------------------------------------

UMASK_API = """
import os, sys
os.umask(int(sys.argv[1], 8))
from mmapipc import Student, Writer
with Writer(sys.argv[2]) as w:
    w.write(Student(1, "m", "m"))
"""


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_new_file_mode_follows_umask(umask: int, tmp_path: Path) -> None:
    expected = 0o664 & ~umask
    api = tmp_path / "api.bin"
    proc = subprocess.run([sys.executable, "-c", UMASK_API, oct(umask)[2:], str(api)],
                          capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(api.stat().st_mode) == expected
    cli = tmp_path / "cli.bin"
    proc = subprocess.run([sys.executable, "-m", "mmapipc", "write", str(cli), "--count", "1"],
                          capture_output=True, timeout=30, check=False, cwd="/",
                          preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(cli.stat().st_mode) == expected


def test_existing_file_mode_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "kept.bin"
    path.write_bytes(b"")
    path.chmod(0o600)
    with Writer(path) as w:
        w.write(WRITTEN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_one_descriptor_per_mapping_closed_with_it(tmp_path: Path) -> None:
    """Each open mapping keeps one close-on-exec descriptor (to ask the file itself whether
    it was truncated), and close() closes it."""
    before = _fd_count()
    path = tmp_path / "f"
    writers = [Writer(path) for _ in range(3)]
    readers = [Reader(path) for _ in range(3)]
    assert _fd_count() == before + 6
    fds = [int(fd) for fd in os.listdir("/proc/self/fd")
           if os.path.realpath(f"/proc/self/fd/{fd}") == str(path)]
    assert len(fds) == 6
    assert all(os.get_inheritable(fd) is False for fd in fds)
    writers[0].write(WRITTEN)
    assert all(r.read() == WRITTEN for r in readers)
    for m in [*writers, *readers]:
        m.close()
    assert _fd_count() == before


STRACE = shutil.which("strace") or "/usr/bin/strace"


@pytest.mark.parametrize("command", ["write", "read"])
def test_every_open_is_cloexec(command: str, tmp_path: Path) -> None:
    """Seen by strace: the CLI's opens of the record file carry O_CLOEXEC."""
    path = tmp_path / "traced.bin"
    Writer(path).close()
    log = tmp_path / "strace.log"
    cmd = [STRACE, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(log),
           sys.executable, "-m", "mmapipc", command, str(path), "--count", "1"]
    proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False, cwd="/")
    assert proc.returncode == 0, proc.stderr
    # the writer opens the file relative to its directory, walked with O_PATH descriptors
    opens = [line for line in log.read_text().splitlines()
             if f'"{path}"' in line or f', "{path.name}",' in line]
    assert opens, f"no open of {path} traced"
    for line in opens:
        assert "O_CLOEXEC" in line, line


# ---- record fields ------------------------------------------------------------------------

NameCase = tuple[str, str | bytes, str | None]  # id, name, error text or None
NAMES: list[NameCase] = [
    ("19-bytes", "a" * 19, None),
    ("19-bytes-utf8", "é" * 9 + "a", None),
    ("20-bytes", "a" * 20, "at most 19 bytes"),
    ("20-bytes-utf8", "é" * 10, "at most 19 bytes"),
    ("100-bytes", "x" * 100, "at most 19 bytes"),
    ("non-utf8", b"\xff\xfe\x80abc", None),
    ("empty", "", None),
]


@pytest.mark.parametrize(("name", "error"), [(n, e) for _, n, e in NAMES],
                         ids=[i for i, _, _ in NAMES])
def test_names(name: str | bytes, error: str | None, tmp_path: Path,
               peers: dict[str, Path]) -> None:
    raw = name.encode() if isinstance(name, str) else name
    path = tmp_path / "names.bin"
    old = Student(7, "before", "m")
    with Writer(path) as w:
        w.write(old)
    before = path.read_bytes()
    if error is not None:
        with pytest.raises(ValueError, match=error):
            Student(1, name, "m")
        proc = run_cli("write", path, "--count", "1", "--name", raw)
        assert_clean_error(proc, "mmapipc write", error)
        assert path.read_bytes() == before, "a refused record changed the file"
        proc = run_cli("write", tmp_path / "new.bin", "--count", "1", "--name", raw)
        assert_clean_error(proc, error)
        assert not (tmp_path / "new.bin").exists()
        return
    record = Student(1, name, "m")
    assert record.name_bytes == raw
    with Writer(path) as w:
        w.write(record)
    with Reader(path) as r:
        assert r.read().name_bytes == raw
    c_out = subprocess.run([str(peers["mmap_r"]), str(path), "1", "0"], capture_output=True,
                           timeout=30, check=True).stdout
    assert c_out == b"id=1\tname=" + raw + b"\tm\n"
    proc = run_cli("write", path, "--count", "1", "--id", "1", "--name", raw)
    assert proc.returncode == 0, proc.stderr
    assert Student.from_bytes(path.read_bytes()).name_bytes == raw
    proc = run_cli("read", path, "--count", "1")
    assert proc.stdout == c_out
    proc = run_cli("read", path, "--count", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["id"] == 1


def test_name_with_nul_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        Student(1, "a\0b", "m")


@pytest.mark.parametrize(("sex", "error"), [(b"\xff", None), ("f", None), (b"\0", None),
                                            ("é", "exactly one byte"),
                                            ("", "exactly one byte"), ("mf", "exactly one byte")])
def test_sex_byte(sex: str | bytes, error: str | None, tmp_path: Path) -> None:
    raw = sex.encode() if isinstance(sex, str) else sex
    path = tmp_path / "sex.bin"
    if error is not None:
        with pytest.raises(ValueError, match=error):
            Student(1, "n", sex)
        if raw:  # argv cannot carry the NUL
            assert_clean_error(run_cli("write", path, "--count", "1", "--sex", raw), error)
        assert not path.exists()
        return
    with Writer(path) as w:
        w.write(Student(1, "n", sex))
    with Reader(path) as r:
        assert r.read().sex_byte == raw
    if raw != b"\0":
        proc = run_cli("write", path, "--count", "1", "--sex", raw)
        assert proc.returncode == 0, proc.stderr
        assert path.read_bytes()[24:25] == raw


def test_twenty_byte_name_from_a_c_writer(tmp_path: Path, peers: dict[str, Path]) -> None:
    """mmap_w can store a name with no NUL; readers cope and print what mmap_r prints."""
    path = tmp_path / "full.bin"
    name = b"abcdefghijklmnopqrst"
    subprocess.run([str(peers["mmap_w"]), str(path), "1", "0", name, "5", "q"],
                   check=True, timeout=30)
    with Reader(path) as r:
        got = r.read()
    assert got.name_bytes == name and got.id == 5 and got.sex_byte == b"q"
    c_out = subprocess.run([str(peers["mmap_r"]), str(path), "1", "0"], capture_output=True,
                           timeout=30, check=True).stdout
    assert run_cli("read", path, "--count", "1").stdout == c_out


def test_bytes_path_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="bytes"):
        Writer(os.fsencode(tmp_path / "b"))  # type: ignore[call-overload]
    assert not (tmp_path / "b").exists()


# ---- encoding against C (hypothesis) --------------------------------------------------------

ENCODER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mmapipc.h"

/* Read "ID NAMEHEX SEXHEX" lines ("-" for an empty name); print the struct's bytes in hex. */
static size_t unhex(const char *s, unsigned char *out, size_t max)
{
    size_t n = 0;
    if (strcmp(s, "-") == 0)
        return 0;
    while (s[0] && s[1] && n < max) {
        unsigned int b;
        if (sscanf(s, "%2x", &b) != 1)
            exit(3);
        out[n++] = (unsigned char)b;
        s += 2;
    }
    return n;
}

int main(void)
{
    char line[256], hname[128], hsex[8];
    long long id;
    while (fgets(line, sizeof line, stdin)) {
        struct STU s;
        unsigned char name[64], sex[1];
        if (sscanf(line, "%lld %127s %7s", &id, hname, hsex) != 3)
            return 2;
        size_t n = unhex(hname, name, sizeof name);
        if (n >= sizeof s.name || unhex(hsex, sex, 1) != 1)
            return 4;
        memset(&s, 0, sizeof s);
        s.id = (int)id;
        memcpy(s.name, name, n);
        s.sex = (char)sex[0];
        const unsigned char *b = (const unsigned char *)&s;
        for (size_t i = 0; i < sizeof s; i++)
            printf("%02x", b[i]);
        putchar('\n');
        fflush(stdout);
    }
    return 0;
}
"""


class Encoder:
    """One long-running C encoder: a line in, the struct's bytes out."""

    def __init__(self, exe: Path) -> None:
        self.proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def encode(self, id: int, name: bytes, sex: bytes) -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{id} {name.hex() or '-'} {sex.hex()}\n".encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the C encoder died (status {self.proc.poll()})"
        return bytes.fromhex(line.decode())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0


@pytest.fixture(scope="module")
def encoder(build_c: Any) -> Iterator[Encoder]:
    enc = Encoder(build_c("stu_encoder", ENCODER))
    yield enc
    enc.close()


names = st.one_of(
    st.lists(st.integers(1, 255), max_size=19).map(bytes),
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=19).filter(
        lambda s: len(s.encode()) <= 19
    ),
)
sexes = st.one_of(st.integers(0, 255).map(lambda b: bytes([b])),
                  st.characters(max_codepoint=127))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(id=st.integers(-(2**31), 2**31 - 1), name=names, sex=sexes)
def test_to_bytes_agrees_with_c(encoder: Encoder, id: int, name: str | bytes,
                                sex: str | bytes) -> None:
    record = Student(id, name, sex)
    raw_name = name.encode() if isinstance(name, str) else name
    raw_sex = sex.encode() if isinstance(sex, str) else sex
    c_bytes = encoder.encode(id, raw_name, raw_sex)
    assert record.to_bytes() == c_bytes
    back = Student.from_bytes(c_bytes)
    assert back == record
    assert (back.id, back.name_bytes, back.sex_byte) == (id, raw_name, raw_sex)


def test_encoder_sees_padding_as_zero(encoder: Encoder) -> None:
    """The C reference itself: zero padding, fields at the header's offsets."""
    data = encoder.encode(1, b"ab", b"m")
    assert data == (1).to_bytes(4, sys.byteorder) + b"ab" + bytes(18) + b"m" + bytes(3)


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(min_size=RECORD_SIZE, max_size=RECORD_SIZE))
def test_from_bytes_never_raises(data: bytes) -> None:
    record = Student.from_bytes(data)
    assert record.id == int.from_bytes(data[:4], sys.byteorder, signed=True)
    assert record.name_bytes == data[4:24].split(b"\0")[0]
    assert record.sex_byte == data[24:25]
    canonical = record.to_bytes()
    assert len(canonical) == RECORD_SIZE and canonical[25:] == bytes(3)
    assert Student.from_bytes(canonical) == record
    line = record.c_line()
    assert line.startswith(b"id=%d\tname=" % record.id) and line.endswith(b"\n")
    json.dumps(record.as_dict())
    repr(record)


@pytest.mark.parametrize("n", [0, 27, 29])
def test_from_bytes_wrong_length(n: int) -> None:
    with pytest.raises(ValueError, match="28 bytes"):
        Student.from_bytes(bytes(n))
