"""API keys the gateway accepts: from a file (one key per line, ``#`` comments) and/or
an environment variable (comma-separated). Keys are kept only as SHA-256 digests, so
they cannot leak through logs, metrics or error messages, and a lookup takes the same
time whichever key (or how much of one) a caller guessed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tokenfleet.errors import TokenfleetError
from tokenfleet.fileio import read_text

ENV_VAR = "TOKENFLEET_API_KEYS"
MIN_KEY_CHARS = 8  # shorter keys are guessable; refuse them at start-up


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """A set of accepted keys; an empty set means authentication is off."""

    def __init__(self, keys: list[str] | None = None) -> None:
        self._digests: set[bytes] = set()
        for k in keys or []:
            self.add(k)

    def add(self, key: str) -> None:
        key = key.strip()
        if len(key) < MIN_KEY_CHARS:
            # Say which key by position only: the key itself must not be printed.
            raise TokenfleetError(f"API keys must be at least {MIN_KEY_CHARS} characters")
        self._digests.add(_digest(key))

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: str | None, api_key_header: str | None = None) -> bool:
        """True when ``Authorization: Bearer <key>`` (or ``api-key: <key>``) is accepted."""
        if not self._digests:
            return True
        return self.identify(authorization, api_key_header) is not None

    def identify(self, authorization: str | None, api_key_header: str | None = None
                 ) -> bytes | None:
        """The digest of the accepted key the request carries (None: none accepted);
        what per-key limits are kept under."""
        key = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                key = value.strip()
        if key is None and api_key_header:
            key = api_key_header.strip()
        if not key:
            return None
        d = _digest(key)
        return d if d in self._digests else None

    @classmethod
    def load(cls, path: str | Path | None = None, env_var: str | None = ENV_VAR) -> ApiKeys:
        """Keys from ``path`` (if given) plus those in ``$env_var`` (if set)."""
        keys = cls()
        if path is not None:
            p = Path(path)
            lines = read_text(p, "API keys").splitlines()
            for n, line in enumerate(lines, 1):
                line = line.strip()
                if not line or line.startswith("#"):  # '#' inside a key is allowed
                    continue
                try:
                    keys.add(line)
                except TokenfleetError as e:
                    raise TokenfleetError(f"{p}:{n}: {e}") from None
        if env_var and os.environ.get(env_var):
            for i, k in enumerate(os.environ[env_var].split(","), 1):
                if k.strip():
                    try:
                        keys.add(k)
                    except TokenfleetError as e:
                        raise TokenfleetError(f"${env_var}, key #{i}: {e}") from None
        return keys
