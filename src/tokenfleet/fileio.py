"""Reading and writing the tool's files safely.

* :func:`read_text` answers a binary or undecodable file with one line naming it
  (:class:`TokenfleetError`, exit code 2 at the CLI), never a ``UnicodeDecodeError``.
* :func:`write_text` / :func:`write_bytes` write atomically: a temporary file in the
  same directory, flushed and ``fsync``-ed, then renamed over the target. A crash or a
  full disk mid-write leaves the old file (or none), never a truncated one that the
  next run would refuse (a truncated ``plan.json`` stops the gateway from restarting).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from tokenfleet.errors import TokenfleetError


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``; one clear error for unreadable, binary (NUL bytes)
    or undecodable content. ``what`` names the file's role in messages."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise TokenfleetError(f"{p}: cannot read {what} ({e.strerror or e})") from None
    return decode_text(data, p, what)


def decode_text(data: bytes, path: str | Path, what: str = "file") -> str:
    """``data`` (the content of ``path``) as text, or the error :func:`read_text` gives."""
    if b"\x00" in data[:65536]:
        raise TokenfleetError(f"{path}: this {what} is a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TokenfleetError(f"{path}: this {what} is not UTF-8 text (byte {e.start}: "
                              f"{e.reason}); is it a binary file?") from None


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    p = Path(path)
    directory = p.parent if str(p.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise TokenfleetError(f"{p}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(OSError):  # keep the mode a plain write would give
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise TokenfleetError(f"{p}: cannot write ({e.strerror or e})") from None
        raise
    # The rename itself must survive a power cut: sync the directory entry.
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode(encoding))


def write_parquet(path: str | Path, frame: Any) -> None:
    """Write a Polars data frame to ``path`` as Parquet, atomically."""
    buf = io.BytesIO()
    frame.write_parquet(buf)
    write_bytes(path, buf.getvalue())
