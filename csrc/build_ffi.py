"""cffi build script: the cdef is read from csrc/mmapipc.h, the single source of truth."""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "mmapipc.h"


def read_cdef(header: Path = HEADER) -> str:
    """Return the header's CDEF section, with #define values left to the compiler."""
    text = header.read_text()
    body = text.split("/* CDEF BEGIN */", 1)[1].split("/* CDEF END */", 1)[0]
    return re.sub(r"^#define\s+(\w+)\s+.*$", r"#define \1 ...", body, flags=re.M)


ffibuilder = FFI()
ffibuilder.cdef(read_cdef())
ffibuilder.set_source(
    "mmapipc._mmapipc_cffi",
    '#include "mmapipc.h"',
    sources=["csrc/mmapipc.c"],  # relative: setuptools builds from the project root
    include_dirs=["csrc"],
    extra_compile_args=["-std=gnu11", "-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
