"""Joining a Ray cluster that wants a token fails with a message that names the
setting to use."""

from __future__ import annotations

import pytest

from tokenfleet.sim.distributed import ray_connect_hint


def test_hint_names_the_token_settings_when_none_is_set() -> None:
    h = ray_connect_hint("Failed to connect to GCS at address 10.0.0.1:6379", "10.0.0.1:6379",
                         {})
    assert "RAY_AUTH_MODE=token" in h and "RAY_AUTH_TOKEN" in h


def test_hint_says_the_cluster_rejected_the_token() -> None:
    h = ray_connect_hint("grpc UNAUTHENTICATED: Invalid or missing authentication token",
                         "auto", {})
    assert "invalid or missing authentication token" in h


def test_hint_when_a_token_is_set_points_at_the_token_and_address() -> None:
    h = ray_connect_hint("Failed to connect", "h:6379",
                         {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x"})
    assert "check the token" in h


def test_no_hint_for_a_local_instance() -> None:
    assert ray_connect_hint("anything", None, {}) == ""


def test_a_dead_address_is_refused_at_once() -> None:
    import socket

    from tokenfleet.errors import TokenfleetError
    from tokenfleet.sim.distributed import ray_session, unreachable

    with socket.socket() as s:  # a port nobody listens on: bind, then close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert unreachable(f"127.0.0.1:{port}") is not None
    assert unreachable("auto") is None
    # refused by the pre-check (Ray itself would retry for minutes)
    with (pytest.raises(TokenfleetError, match=f"nothing accepts connections at 127.0.0.1:{port}"),
          ray_session(address=f"127.0.0.1:{port}")):
        pass
