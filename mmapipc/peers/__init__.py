"""C twins of mmap_w and mmap_r, shipped as source and compiled on demand."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = {"mmap_w": HERE / "mmap_w.c", "mmap_r": HERE / "mmap_r.c"}


class CompilerError(RuntimeError):
    """The C compiler is missing or failed."""


def find_compiler() -> str | None:
    """The system C compiler ($CC, cc, gcc or clang), or None."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def compile_c(source: str | Path, output: str | Path, cc: str | None = None) -> Path:
    """Compile one C file to an executable; CompilerError with the compiler's message."""
    compiler = cc or find_compiler()
    if compiler is None:
        raise CompilerError("no C compiler found (set CC, or install cc/gcc/clang)")
    cmd = [compiler, "-O2", "-o", os.fspath(output), os.fspath(source)]
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
