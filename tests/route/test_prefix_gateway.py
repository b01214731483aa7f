"""The gateway's cache-affinity routing (``prefix-affinity``): the shared rule of
``routing.affinity``, applied to pools and then to a pool's backends, with prefix blocks
from the request's token ids or its text."""

from __future__ import annotations

import random
from collections import Counter

from tokenfleet.route.config import BackendsFile
from tokenfleet.route.router import Choice, Router
from tokenfleet.route.tokens import TokenCounter
from tokenfleet.routing.affinity import prompt_blocks, text_blocks

from .conftest import BUCKET, make_plan, unit

BACKENDS = [f"http://b{i}:1" for i in range(4)]


def _router(policy: str) -> tuple[Router, object]:
    plan = make_plan([unit("chat/a", replicas=4)], {("chat", BUCKET): {"chat/a": 1.0}})
    files = BackendsFile.model_validate({"pools": {"chat/a": {"backends": BACKENDS}}})
    r = Router(plan, files, policy=policy, seed=1)
    return r, r.tier_for("chat")


def _route_conversations(policy: str, turns: int = 5, conversations: int = 12) -> float:
    """Share of turns that land on the backend their conversation's previous turn used
    (where its KV cache is)."""
    r, tier = _router(policy)
    last: dict[int, str] = {}
    same = total = 0
    order = list(range(conversations))
    rng = random.Random(7)
    for turn in range(turns):
        rng.shuffle(order)  # conversations come back in any order
        for c in order:
            # turn k of conversation c: the conversation so far, then a new message
            blocks = prompt_blocks([c * 1000 + j for j in range(512 * (turn + 1))])
            ch = r.choose(tier, BUCKET, 0.0, blocks=blocks if policy == "prefix-affinity"
                          else ())
            assert isinstance(ch, Choice)
            if c in last:
                same += ch.backend.url == last[c]
                total += 1
            last[c] = ch.backend.url
            ch.backend.in_flight += 1  # the request runs on: load counts
        for b in ch.pool.backends:
            b.in_flight = 0
    return same / total


def test_prefix_affinity_keeps_a_conversation_on_its_backend() -> None:
    affine = _route_conversations("prefix-affinity")
    spread = _route_conversations("jsq")
    assert affine >= 0.9
    assert spread < 0.5  # least loaded alone scatters the turns


def test_affinity_is_bounded_by_load() -> None:
    r, tier = _router("prefix-affinity")
    blocks = prompt_blocks(list(range(2048)))
    first = r.choose(tier, BUCKET, 0.0, blocks=blocks)
    assert isinstance(first, Choice)
    first.backend.in_flight = first.backend.max_in_flight // 2 + 2  # far fuller than peers
    again = r.choose(tier, BUCKET, 0.0, blocks=blocks)
    assert isinstance(again, Choice) and again.backend is not first.backend


def test_blocks_from_ids_tokenizer_or_text() -> None:
    tc = TokenCounter()
    ids = list(range(1100))
    assert tc.prefix_blocks("completion", {"prompt": ids}) == prompt_blocks(ids)
    assert len(prompt_blocks(ids)) == 2  # whole 512-token blocks only
    a = "x" * 5000
    chat = {"messages": [{"role": "user", "content": a}]}
    assert tc.prefix_blocks("chat", chat) == text_blocks([a])
    longer = {"messages": [{"role": "user", "content": a},
                           {"role": "assistant", "content": "y" * 3000}]}
    # a longer conversation shares its predecessor's leading blocks
    assert tc.prefix_blocks("chat", longer)[:2] == text_blocks([a])[:2]
    assert Counter(text_blocks(["z" * 100])) == Counter()  # under one block: none
