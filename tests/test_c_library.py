"""mmapipc_record.h, the header-only C library, against the Python package and the C twins.

Every C program here is compiled by the test with the system compiler (-Wall -Werror)
against mmapipc.get_include(), and runs as a separate process.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import (
    NUMBERED_C,
    Build,
    assert_clean_error,
    numbered,
    run_cli,
    start_cli,
    start_ready,
)

from mmapipc import Reader, Student, Writer, get_include
from mmapipc.peers import build_peer

ROOT = Path(__file__).resolve().parents[1]
PERIOD = 2002  # records the writers cycle through
READ_SECONDS = 4.0  # the Python reader's budget against the C writer
READ_TARGET = 1_000_000




HAMMER_WRITER = NUMBERED_C + rf"""
/* Stores numbered records through the header as fast as the CPU goes. */
static struct STU table[{PERIOD}];

int main(int argc, char **argv)
{{
    if (argc != 2)
        return 2;
    for (int n = 0; n < {PERIOD}; n++)
        numbered(&table[n], n);
    mmapipc_rec *r = open_stu(argv[1], MMAPIPC_REC_WRITE);
    if (r == NULL || mmapipc_rec_store(r, &table[0]) != 0)
        return 3;
    printf("ready\n");
    fflush(stdout);
    for (;;)
        for (int n = 0; n < {PERIOD}; n++)
            if (mmapipc_rec_store(r, &table[n]) != 0)
                return 4;
}}
"""

LOOP_READER = NUMBERED_C + r"""
#include <stdlib.h>
#include <time.h>

/* rec_load in a loop for SECONDS: counts reads, torn records and changes. */
int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    double seconds = atof(argv[2]);
    mmapipc_rec *r = open_stu(argv[1], 0);
    if (r == NULL) {
        perror(argv[1]);
        return 3;
    }
    long reads = 0, torn = 0, changes = 0, prev = -1;
    int64_t end = mmapipc_rec__now_ns() + (int64_t)(seconds * 1e9);
    struct STU got, want;
    while (mmapipc_rec__now_ns() < end) {
        for (int i = 0; i < 256; i++) {
            if (mmapipc_rec_load(r, &got) != 0) {
                perror("load");
                return 4;
            }
            reads++;
            numbered(&want, got.id);
            if (memcmp(&got, &want, sizeof got) != 0)
                torn++;
            if (got.id != prev)
                changes++;
            prev = got.id;
        }
    }
    printf("reads=%ld torn=%ld changes=%ld\n", reads, torn, changes);
    mmapipc_rec_close(r);
    return 0;
}
"""

WAITER = NUMBERED_C + r"""
#include <stdlib.h>

/* Load, then mmapipc_rec_wait(TIMEOUT_MS): prints the outcome, the id, the ms waited and
 * when it returned (CLOCK_MONOTONIC ns, Python's time.monotonic_ns()). */
int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    long long timeout = atoll(argv[2]) * 1000000LL;
    mmapipc_rec *r = open_stu(argv[1], 0);
    struct STU s;
    if (r == NULL || mmapipc_rec_load(r, &s) != 0)
        return 3;
    printf("ready\n");
    fflush(stdout);
    int64_t t0 = mmapipc_rec__now_ns();
    int rc = mmapipc_rec_wait(r, &s, timeout);
    double ms = (mmapipc_rec__now_ns() - t0) / 1e6;
    printf("rc=%d id=%d ms=%.3f at=%lld\n", rc, rc == 1 ? s.id : -1, ms,
           (long long)mmapipc_rec__now_ns());
    mmapipc_rec_close(r);
    return 0;
}
"""

PY_HAMMER = f"""
import sys
from mmapipc import Student, Writer
def numbered(n):
    return Student(n, f"n{{n % 100000:05d}}" + "abcdefghijklm"[: n % 14], "mf"[n % 2])
records = [numbered(n) for n in range({PERIOD})]
with Writer(sys.argv[1]) as w:
    write = w.write
    write(records[0])
    print("ready", flush=True)
    while True:
        for r in records:
            write(r)
"""


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)


def test_get_include_and_cflags_name_the_shipped_header() -> None:
    include = Path(get_include())
    assert (include / "mmapipc_record.h").is_file()
    proc = run_cli("cflags")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == f"-I{include}"


def test_header_ships_in_the_package_data() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"include/*.h"' in pyproject
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "recursive-include mmapipc/include *.h" in manifest
    assert "graft examples" in manifest.splitlines()  # the tests below compile them


def test_the_c_example_in_the_docs_compiles_and_talks_to_python(cbuild: Build,
                                                               tmp_path: Path) -> None:
    text = (ROOT / "docs" / "c.md").read_text()
    source = text.split("## A C writer, a Python watcher", 1)[1].split("```c\n", 1)[1]
    source = source.split("```", 1)[0].replace("/tmp/stu", str(tmp_path / "stu"))
    exe = cbuild("doc_writer", source)
    proc = subprocess.Popen([str(exe)])
    try:
        with Reader(tmp_path / "stu", wait=True, wait_timeout=10) as r:
            first = r.read()
            if first.name == "":  # opened between the writer's ftruncate and its first store
                first = r.wait_for_change(timeout=5)
            second = r.wait_for_change(timeout=5)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert first.name == "xiaoming" and second.id == first.id + 1


README_C_SECTION = "\n## Watch every change, from C too\n"


def _readme_c_section() -> dict[str, str]:
    """The fenced blocks (c, python, sh) of the README's section with the C writer."""
    readme = (ROOT / "README.md").read_text()
    assert README_C_SECTION in readme, "the README lost its C writer section"
    section = readme.split(README_C_SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", section, re.S | re.M)
    assert [lang for lang, _ in blocks] == ["c", "python", "sh"], blocks
    return dict(blocks)


def test_the_c_writer_in_the_readme_talks_to_the_python_watcher_beside_it(
        cc: str, tmp_path: Path) -> None:
    """The README's C program, built by the README's own command line (-Wall -Wextra -Werror
    added), stores 10 records; the README's Python watcher, `mmapipc watch` and a Reader
    here, all opened before its first store, see every one of them, in order."""
    blocks = _readme_c_section()
    assert len(blocks["c"].splitlines()) <= 15, "the README's C program grew past 15 lines"
    build_and_run, watch_line = blocks["sh"].splitlines()
    build, run = build_and_run.split("#")[0].strip().removesuffix("&").split(" && ")
    assert watch_line.startswith("python3 watch.py ")
    (tmp_path / "w.c").write_text(blocks["c"])
    # cc and mmapipc as this test run has them: the compiler found, this interpreter's package
    shell = (f"cc() {{ command {shlex.quote(cc)} \"$@\" -Wall -Wextra -Werror; }}\n"
             f"mmapipc() {{ command {shlex.quote(sys.executable)} -m mmapipc \"$@\"; }}\n"
             f"{build}\n")
    proc = subprocess.run(["sh", "-c", shell], cwd=tmp_path, capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0 and proc.stderr == "", f"{build}: {proc.stderr}"

    path = tmp_path / "stu"
    path.write_bytes(bytes(28))  # the watchers open it before the writer's first store
    assert '"/tmp/stu"' in blocks["python"] and " /tmp/stu" in run
    watcher = subprocess.Popen(
        [sys.executable, "-u", "-c", blocks["python"].replace('"/tmp/stu"', repr(str(path)))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cli = start_cli("watch", path, "--timeout", "1")
    writer: subprocess.Popen[bytes] | None = None
    try:
        assert watcher.stdout is not None and cli.stdout is not None
        first = watcher.stdout.readline()  # both print the record at open: they are watching
        cli_first = cli.stdout.readline()
        with Reader(path) as r:
            records = r.watch(timeout=1)
            seen = [next(records)]  # the record at open, before the writer runs
            writer = subprocess.Popen(shlex.split(run.replace("/tmp/stu", str(path))),
                                      cwd=tmp_path, stderr=subprocess.PIPE)
            seen += records
        _, writer_err = writer.communicate(timeout=30)
        out, err = watcher.communicate(timeout=30)
        cli_out, cli_err = cli.communicate(timeout=30)
    finally:
        for p in (watcher, cli, writer):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    stored = [Student(n, "xiaoming", "m") for n in range(10, 20)]
    assert writer.returncode == 0, writer_err
    assert seen == [Student(0, "", "\0"), *stored]
    assert watcher.returncode == 0, err
    assert first == f"{Student(0, '', chr(0))}\n"
    assert out.splitlines() == [str(s) for s in stored]
    assert out.splitlines()[0] in blocks["python"]  # what the README says it prints
    assert cli.returncode == 0, cli_err
    assert cli_first == Student(0, "", "\0").c_line()
    assert cli_out == b"".join(s.c_line() for s in stored)


def test_the_c_writer_in_the_readme_says_why_it_fails(cbuild: Build, tmp_path: Path) -> None:
    """A usage error or a path it cannot open: perror's one line and a non-zero status."""
    exe = cbuild("readme_w", _readme_c_section()["c"])
    for args, message in (([], "usage: w FILE: Invalid argument\n"),
                          ([str(tmp_path / "no" / "stu")],
                           f"{tmp_path / 'no' / 'stu'}: No such file or directory\n"),
                          (["a", "b"], "usage: w FILE: Invalid argument\n")):
        proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=30,
                              check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", message), args


def test_c_writer_on_the_header_to_python_reader_never_torn(cbuild: Build, tmp_path: Path) -> None:
    """A C writer storing as fast as it can; Python's Reader: no torn record, ever."""
    path = tmp_path / "stu"
    writer = start_ready([str(cbuild("hammer_w", HAMMER_WRITER)), str(path)])
    expected = [numbered(n) for n in range(PERIOD)]
    reads = torn = changes = 0
    prev = -1
    try:
        with Reader(path) as r:
            read = r.read
            end = time.monotonic() + READ_SECONDS
            while reads < READ_TARGET and time.monotonic() < end:
                for _ in range(1000):
                    rec = read()
                    if not 0 <= rec.id < PERIOD or rec != expected[rec.id]:
                        torn += 1
                    if rec.id != prev:
                        changes += 1
                        prev = rec.id
                reads += 1000
            stats = r.stats
        alive = writer.poll() is None
    finally:
        _stop(writer)
    print(f"\nC writer -> Python Reader: {reads} reads, {changes} changes, {torn} torn,"
          f" {stats['seqlock_reads']} through the lock")
    assert torn == 0
    assert alive, "the writer died"
    # the writer really was storing (how many changes a reader sees depends on how the
    # two processes share the cores of a busy machine)
    assert reads >= 100_000 and changes >= 10
    assert stats["seqlock_reads"] > 0  # the Python core speaks the header's protocol


def test_python_writer_to_c_reader_on_the_header_never_torn(cbuild: Build, tmp_path: Path) -> None:
    path = tmp_path / "stu"
    reader = cbuild("loop_r", LOOP_READER)
    writer = start_ready([sys.executable, "-c", PY_HAMMER, str(path)])
    try:
        proc = subprocess.run([str(reader), str(path), "3"], capture_output=True, text=True,
                              timeout=30, check=False)
    finally:
        _stop(writer)
    assert proc.returncode == 0, proc.stderr
    counts = dict(kv.split("=") for kv in proc.stdout.split())
    print(f"\nPython Writer -> C reader: {proc.stdout.strip()}")
    assert int(counts["torn"]) == 0
    assert int(counts["reads"]) >= 10_000 and int(counts["changes"]) >= 10


def test_seed_mmap_r_reads_the_header_writer(cbuild: Build, tmp_path: Path) -> None:
    """The lock bytes live in padding: the legacy reader prints the right lines."""
    path = tmp_path / "stu"
    writer = cbuild("mmap_w", ROOT / "examples" / "c" / "mmap_w.c")
    subprocess.run([str(writer), str(path), "3", "1"], check=True, timeout=30)
    assert path.read_bytes()[25] == 0xA6  # the notifying writer's marker
    mmap_r = build_peer("mmap_r", tmp_path)
    proc = subprocess.run([str(mmap_r), str(path), "2", "1"], capture_output=True, timeout=30,
                          check=False)
    assert proc.returncode == 0
    assert proc.stdout == b"id=12\tname=xiaoming\tm\n" * 2


def test_header_reader_reads_the_seed_mmap_w(cbuild: Build, tmp_path: Path) -> None:
    """A legacy record (no marker): the header's reader reads it by agreement."""
    path = tmp_path / "stu"
    mmap_w = build_peer("mmap_w", tmp_path)
    subprocess.run([str(mmap_w), str(path), "2", "1", "xiaohong", "41", "f"], check=True,
                   timeout=30)
    reader = cbuild("mmap_r", ROOT / "examples" / "c" / "mmap_r.c")
    proc = subprocess.run([str(reader), str(path), "2", "1"], capture_output=True, timeout=30,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"id=42\tname=xiaohong\tf\n" * 2


def test_examples_talk_to_each_other_and_to_python(cbuild: Build, tmp_path: Path) -> None:
    path = tmp_path / "stu"
    writer = cbuild("mmap_w", ROOT / "examples" / "c" / "mmap_w.c")
    reader = cbuild("mmap_r", ROOT / "examples" / "c" / "mmap_r.c")
    subprocess.run([str(writer), str(path), "5", "1"], check=True, timeout=30)
    proc = subprocess.run([str(reader), str(path), "1", "1"], capture_output=True, timeout=30,
                          check=True)
    assert proc.stdout == b"id=14\tname=xiaoming\tm\n"
    with Reader(path) as r:
        assert r.read() == Student(14, "xiaoming", "m")


def test_c_wait_wakes_on_a_python_store(cbuild: Build, tmp_path: Path) -> None:
    path = tmp_path / "stu"
    waiter = cbuild("waiter", WAITER)
    with Writer(path) as w:
        w.write(numbered(1))
        proc = start_ready([str(waiter), str(path), "10000"])
        time.sleep(0.3)  # the waiter is asleep on the futex by now
        stored = time.monotonic_ns()
        w.write(numbered(2))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    fields = dict(kv.split("=") for kv in out.split())
    latency_ms = (int(fields["at"]) - stored) / 1e6
    print(f"\nC wait woken by a Python store: {out.strip()}, {latency_ms:.3f} ms after it")
    assert fields["rc"] == "1" and fields["id"] == "2"
    assert 0 < latency_ms < 5000  # woken by the store, not timed out (10 s)


def test_c_wait_sees_a_legacy_writer_by_looking(cbuild: Build, tmp_path: Path) -> None:
    """The seed-style mmap_w wakes nobody (no marker): the C wait looks every millisecond."""
    path = tmp_path / "stu"
    mmap_w = subprocess.Popen([str(build_peer("mmap_w", tmp_path)), str(path), "3", "1000"])
    try:
        deadline = time.monotonic() + 10
        while (not path.exists() or path.stat().st_size < 28) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc = start_ready([str(cbuild("waiter", WAITER)), str(path), "5000"])
        out, err = proc.communicate(timeout=30)
    finally:
        mmap_w.kill()
        mmap_w.wait(timeout=10)
    assert proc.returncode == 0, err
    fields = dict(kv.split("=") for kv in out.split())
    assert fields["rc"] == "1" and fields["id"] in ("10", "11", "12"), out
    assert path.read_bytes()[25] not in (0xA5, 0xA6)  # no marker: nothing to sleep on


def test_c_wait_on_a_notifying_writer_sees_a_legacy_writer_take_over(cbuild: Build,
                                                                     tmp_path: Path) -> None:
    """The marker says 0xA6, but the seed-style mmap_w overwrites the record and wakes nobody:
    the futex sleep comes in slices, so the wait sees the change long before its timeout."""
    path = tmp_path / "stu"
    with Writer(path) as w:
        w.write(numbered(1))
    proc = start_ready([str(cbuild("waiter", WAITER)), str(path), "10000"])
    time.sleep(0.2)  # the waiter is asleep on the futex by now
    subprocess.run([str(build_peer("mmap_w", tmp_path)), str(path), "1"], check=True, timeout=30)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    fields = dict(kv.split("=") for kv in out.split())
    assert fields["rc"] == "1" and fields["id"] == "10", out
    assert float(fields["ms"]) < 5000  # a slice (200 ms) after the change, not the 10 s timeout


def test_c_wait_times_out_on_time(cbuild: Build, tmp_path: Path) -> None:
    path = tmp_path / "stu"
    waiter = cbuild("waiter", WAITER)
    with Writer(path) as w:
        w.write(numbered(1))
        proc = start_ready([str(waiter), str(path), "200"])
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    fields = dict(kv.split("=") for kv in out.split())
    assert fields["rc"] == "0" and fields["id"] == "-1"
    assert 199.0 <= float(fields["ms"]) < 5000


REFUSALS = NUMBERED_C + r"""
#include <errno.h>

/* Prints the errno of mmapipc_rec_open(PATH, flags from argv[2]), or "ok". */
int main(int argc, char **argv)
{
    int flags = argv[2][0] == 'w' ? MMAPIPC_REC_WRITE : 0;
    (void)argc;
    mmapipc_rec *r = open_stu(argv[1], flags);
    if (r == NULL) {
        printf("%s\n", errno == EEXIST ? "EEXIST" : errno == ELOOP ? "ELOOP" :
               errno == ENODEV ? "ENODEV" : errno == ENODATA ? "ENODATA" :
               errno == EMLINK ? "EMLINK" : "other");
        return 1;
    }
    if (flags == 0 && mmapipc_rec_store(r, "0123456789012345678901234567") == 0)
        return 5;   /* a read-only handle must refuse to store */
    printf(flags == 0 ? "ok %s\n" : "ok\n", errno == EBADF ? "EBADF" : "?");
    mmapipc_rec_close(r);
    return 0;
}
"""


def test_open_refuses_as_python_does(cbuild: Build, tmp_path: Path) -> None:
    prog = cbuild("refuse", REFUSALS)

    def opened(path: Path, mode: str) -> str:
        proc = subprocess.run([str(prog), str(path), mode], capture_output=True, text=True,
                              timeout=30, check=False)
        return proc.stdout.strip()

    longer = tmp_path / "longer"
    longer.write_bytes(b"x" * 100)
    assert opened(longer, "w") == "EEXIST" and longer.read_bytes() == b"x" * 100
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    assert opened(link, "w") == "ELOOP" and not (tmp_path / "target").exists()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert opened(fifo, "r") == "ENODEV" and opened(fifo, "w") == "ENODEV"
    short = tmp_path / "short"
    short.write_bytes(b"\0" * 27)
    assert opened(short, "r") == "ENODATA"
    os.link(short, tmp_path / "other")
    assert opened(short, "w") == "EMLINK" and short.stat().st_size == 27
    fresh = tmp_path / "fresh"
    assert opened(fresh, "w") == "ok" and fresh.stat().st_size == 28
    assert opened(fresh, "r") == "ok EBADF"


def test_layout_c_prints_the_defines(cbuild: Build, tmp_path: Path) -> None:
    header = tmp_path / "sensor.h"
    header.write_text("typedef struct { double t; int id; char tag[16]; char flag; } sensor_t;\n"
                      "struct tight { int a; int b; };\n")
    proc = run_cli("layout", header, "sensor_t", "--c")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == ("#define SENSOR_T_SIZE 32\n#define SENSOR_T_MARKER 29\n"
                                    "#define SENSOR_T_SEQ 30\n")
    # the defines compile, and the struct matches them
    (tmp_path / "sensor_defs.h").write_bytes(proc.stdout)
    check = (f'#include "{header}"\n#include "{tmp_path / "sensor_defs.h"}"\n'
             "#include \"mmapipc_record.h\"\n"
             "_Static_assert(sizeof(sensor_t) == SENSOR_T_SIZE, \"size\");\n"
             "int main(void) { return mmapipc_rec_open(\"/nonexistent/x\", SENSOR_T_SIZE,"
             " SENSOR_T_MARKER, SENSOR_T_SEQ, 0) != 0; }\n")
    cbuild("sensor_check", check)
    proc = run_cli("layout", header, "struct tight", "--c")
    assert_clean_error(proc, "mmapipc layout: struct tight: no run of 3 padding bytes")
    assert_clean_error(run_cli("layout", header, "sensor_t", "--c", "--json"), "choose one")
    assert_clean_error(run_cli("cflags", "extra"), "mmapipc cflags", "unrecognized arguments")
    proc = run_cli("layout", header, "sensor_t", "--c", "--check")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith("#define SENSOR_T_SIZE 32\n")
    assert proc.stdout.decode().count("\n") == 3 and b"check: " in proc.stderr


def test_c_and_python_writers_take_turns_through_the_same_lock(cbuild: Build,
                                                               tmp_path: Path) -> None:
    """Two writers of one file, one C on the header and one Python: the compare-and-swap on
    the shared sequence keeps their stores apart, so a reader never sees a mix of both."""
    path = tmp_path / "stu"
    c_writer = start_ready([str(cbuild("hammer_w", HAMMER_WRITER)), str(path)])
    py_writer = start_ready([sys.executable, "-c", PY_HAMMER, str(path)])
    try:
        proc = subprocess.run([str(cbuild("loop_r", LOOP_READER)), str(path), "2"],
                              capture_output=True, text=True, timeout=30, check=False)
        alive = c_writer.poll() is None and py_writer.poll() is None
    finally:
        _stop(c_writer)
        _stop(py_writer)
    assert proc.returncode == 0, proc.stderr
    counts = dict(kv.split("=") for kv in proc.stdout.split())
    print(f"\nC + Python writers -> C reader: {proc.stdout.strip()}")
    assert alive, "a writer died"
    assert int(counts["torn"]) == 0
    assert int(counts["reads"]) >= 10_000 and int(counts["changes"]) >= 10


NO_LOCK = r"""
#include <errno.h>
#include <stdio.h>
#include "mmapipc_record.h"

struct P { int a, b; };   /* no padding: no room for the lock */

int main(int argc, char **argv)
{
    struct P p = {1, 2}, q = {0, 0};
    (void)argc;
    mmapipc_rec *bad = mmapipc_rec_open(argv[1], sizeof p, 5, 4, 0);   /* overlapping */
    printf("bad=%s\n", bad == NULL && errno == EINVAL ? "EINVAL" : "?");
    mmapipc_rec *w = mmapipc_rec_open(argv[1], sizeof p, -1, -1, MMAPIPC_REC_WRITE);
    mmapipc_rec *r = mmapipc_rec_open(argv[1], sizeof p, -1, -1, 0);
    if (w == NULL || r == NULL || mmapipc_rec_store(w, &p) != 0)
        return 3;
    int first = mmapipc_rec_wait(r, &q, 1000000);
    printf("first=%d b=%d\n", first, q.b);
    int none = mmapipc_rec_wait(r, &q, 5000000);
    printf("none=%d\n", none);
    p.b = 3;
    if (mmapipc_rec_store(w, &p) != 0)
        return 4;
    int changed = mmapipc_rec_wait(r, &q, 5000000);
    printf("changed=%d b=%d\n", changed, q.b);
    mmapipc_rec_close(w);
    mmapipc_rec_close(r);
    mmapipc_rec_close(NULL);
    return 0;
}
"""


def test_a_struct_without_room_for_the_lock(cbuild: Build, tmp_path: Path) -> None:
    """Offsets -1, -1: plain whole-record copies, read by agreement; bad offsets: EINVAL."""
    path = tmp_path / "p"
    proc = subprocess.run([str(cbuild("no_lock", NO_LOCK)), str(path)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "bad=EINVAL\nfirst=1 b=2\nnone=0\nchanged=1 b=3\n"
    assert path.read_bytes() == (1).to_bytes(4, sys.byteorder) + (3).to_bytes(4, sys.byteorder)
