"""The one exception type users see: a clear message, no traceback."""

from __future__ import annotations


class TokenfleetError(Exception):
    """Bad input or an impossible request. The message names the file, field and the
    allowed values where that applies; the CLI prints it and exits non-zero."""
