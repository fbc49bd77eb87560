"""C twins of mmap_w and mmap_r, shipped as source and compiled on demand."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = {"mmap_w": HERE / "mmap_w.c", "mmap_r": HERE / "mmap_r.c"}


class CompilerError(RuntimeError):
    """The C compiler is missing or failed."""


def find_compiler() -> str | None:
    """The system C compiler: $CC if it is set, else cc, gcc or clang; None if none is found.

    A $CC that is set but cannot be found raises CompilerError rather than quietly
    giving way to another compiler.
    """
    chosen = os.environ.get("CC", "").strip()
    if chosen:
        try:
            program = shlex.split(chosen)[0]
        except (ValueError, IndexError):
            raise CompilerError(f"CC={chosen}: not a command") from None
        if shutil.which(program) is None:
            raise CompilerError(f"CC={chosen}: {program} not found")
        return chosen
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    return None


def compile_c(source: str | Path, output: str | Path, cc: str | None = None,
              flags: Sequence[str] = ()) -> Path:
    """Compile one C file to an executable (flags: after the source, e.g. -I, -l);
    CompilerError with the compiler's message."""
    compiler = cc or find_compiler()
    if compiler is None:
        raise CompilerError("no C compiler found (set CC, or install cc/gcc/clang)")
    cmd = [*shlex.split(compiler), "-O2", "-o", os.fspath(output), os.fspath(source), *flags]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise CompilerError(f"{compiler}: {e.strerror}") from None
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["failed"])[0]
        raise CompilerError(f"{compiler} {source}: {first}")
    return Path(output)


def build_peer(name: str, outdir: str | Path, cc: str | None = None) -> Path:
    """Compile the C twin 'mmap_w' or 'mmap_r' into outdir and return its path."""
    if name not in SOURCES:
        raise ValueError(f"unknown peer {name!r}; choose from {sorted(SOURCES)}")
    return compile_c(SOURCES[name], Path(outdir) / name, cc)
