from __future__ import annotations

from pathlib import Path

import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.route.auth import ApiKeys
from tokenfleet.route.config import check_against_plan, load_backends

from .conftest import BUCKET, make_plan, unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "backends.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "backends.yaml"
    p.write_text(text)
    return p


def test_example_file_loads_and_matches_its_plan():
    spec = load_backends(EXAMPLE)
    assert spec.gateway.policy == "plan"
    pools = list(spec.pools)
    plan = make_plan([unit(p, tier=p.split("/")[0], model="llama-3.1-70b") for p in pools],
                     {})
    check_against_plan(spec, plan)


def test_strings_and_objects_as_backends(tmp_path):
    spec = load_backends(_write(tmp_path, """
pools:
  chat/a:
    max_in_flight: 8
    backends: [http://127.0.0.1:9001/, {url: "http://127.0.0.1:9002", max_in_flight: 2}]
"""))
    b = spec.pools["chat/a"].backends
    assert b[0].url == "http://127.0.0.1:9001" and b[0].max_in_flight is None
    assert b[1].max_in_flight == 2


@pytest.mark.parametrize("text, match", [
    ("pools: {}", "pools"),
    ("pools:\n  chat/a:\n    backends: []", "backends"),
    ("pools:\n  chat/a:\n    backends: [ftp://x]", "must start with http"),
    ("pools:\n  chat/a:\n    backends: [http://x:1]\n  chat/b:\n    backends: [http://x:1]",
     "listed under both"),
    ("gateway:\n  policy: fastest\npools:\n  chat/a:\n    backends: [http://x:1]",
     "unknown routing policy"),
    ("gateway:\n  retries: 3\npools:\n  chat/a:\n    backends: [http://x:1]",
     "unknown field"),
    ("pools:\n  chat/a:\n    backends: [http://x:1\n", "malformed YAML"),
    ("- a\n- b\n", "a backends file is a mapping"),
])
def test_bad_backends_files_name_the_problem(tmp_path, text, match):
    with pytest.raises(TokenfleetError, match=match):
        load_backends(_write(tmp_path, text))


def test_pools_must_exist_in_plan_and_cover_every_tier(tmp_path, monkeypatch):
    plan = make_plan([unit("chat/a"), unit("chat/b"), unit("code/a", tier="code",
                                                          model="llama-3.1-70b")],
                     {("chat", BUCKET): {"chat/a": 1.0}})
    spec = load_backends(_write(tmp_path, "pools:\n  chat/z:\n    backends: [http://x:1]"))
    with pytest.raises(TokenfleetError, match="'chat/z' are not in the plan"):
        check_against_plan(spec, plan)
    spec = load_backends(_write(tmp_path, "pools:\n  chat/a:\n    backends: [http://x:1]"))
    with pytest.raises(TokenfleetError, match="tier.*code have no backend"):
        check_against_plan(spec, plan)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    spec = load_backends(_write(tmp_path, """
pools:
  chat/a: {backends: [http://x:1], api_key_env: NO_SUCH_KEY_VAR}
  code/a: {backends: [http://y:1]}
"""))
    warnings = check_against_plan(spec, plan)
    assert any("chat/b" in w and "no backends" in w for w in warnings)
    assert any("NO_SUCH_KEY_VAR" in w for w in warnings)


def test_api_keys_from_file_and_env(tmp_path, monkeypatch):
    f = tmp_path / "keys"
    f.write_text("# team keys\nsk-first-key-123\n\n  sk-second#key  \n")
    monkeypatch.setenv("TOKENFLEET_API_KEYS", "sk-from-env-1, sk-from-env-2")
    keys = ApiKeys.load(f)
    assert len(keys) == 4
    assert keys.check("Bearer sk-first-key-123")
    assert keys.check("bearer sk-second#key")
    assert keys.check(None, "sk-from-env-2")  # Azure-style api-key header
    assert not keys.check("Bearer sk-first-key-12")
    assert not keys.check("Basic sk-first-key-123")
    assert not keys.check(None)
    assert ApiKeys().check(None)  # no keys: authentication off


def test_short_or_unreadable_keys_are_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("TOKENFLEET_API_KEYS", raising=False)
    f = tmp_path / "keys"
    f.write_text("sk-long-enough\nQz7x\n")
    with pytest.raises(TokenfleetError, match=r"keys:2: API keys must be at least 8") as e:
        ApiKeys.load(f)
    assert "Qz7x" not in str(e.value)  # the key is not echoed
    with pytest.raises(TokenfleetError, match="cannot read API keys"):
        ApiKeys.load(tmp_path / "missing")
