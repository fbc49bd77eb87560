"""The one place the compiled C core is imported."""

try:
    from mmapipc._mmapipc_cffi import ffi, lib
except ImportError as e:  # a source checkout on sys.path, not the built package
    raise ImportError(
        "mmapipc's compiled core (mmapipc._mmapipc_cffi) is missing: this is an unbuilt"
        " source tree; install the package (pip install .) and run from elsewhere"
    ) from e

__all__ = ["ffi", "lib"]
