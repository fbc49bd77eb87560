"""The base of mmapipc's own errors (kept apart so that layouts need no compiled core)."""


class MmapipcError(Exception):
    """Base of the errors that errno cannot express."""
