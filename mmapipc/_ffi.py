"""The one place the compiled C core is imported."""

import sys

try:
    from mmapipc._mmapipc_cffi import ffi, lib
except ImportError as e:  # a source checkout on sys.path, not the built package
    message = (
        "mmapipc's compiled core (mmapipc._mmapipc_cffi) is missing: this is an unbuilt"
        " source tree; install the package (pip install .) and run it from elsewhere"
    )
    if sys.argv[:1] == ["-m"]:  # `python -m mmapipc` in a checkout: one line, no traceback
        sys.stderr.write(f"mmapipc: {message}\n")
        raise SystemExit(1) from None
    raise ImportError(message) from e

__all__ = ["ffi", "lib"]
