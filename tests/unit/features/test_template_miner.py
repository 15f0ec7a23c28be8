"""The Drain template miner: masking, merging, ids, rarity, eviction, snapshots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from otelai.features.drain import MASK, WILDCARD, TemplateMiner


def _templates(miner: TemplateMiner, lines: list[str]) -> list[str]:
    matches = miner.add_batch(lines)
    return [miner.template(int(template_id)) or "" for template_id in matches.ids]


@pytest.mark.parametrize(
    ("line", "masked"),
    [
        ("connected to 10.0.0.1:8080 in 35 ms", "connected to <*>:<*> in <*> ms"),
        ("req 550e8400-e29b-41d4-a716-446655440000 done", "req <*> done"),
        ("addr 0x1b85fe80 mask 0x02", "addr <*> mask <*>"),
        ("sha deadbeef12345678 ok", "sha <*> ok"),
        ("node R02-M1-N0 up", "node R02-M1-N0 up"),  # identifiers keep their digits
        ("took 1.25 s at 2005-06-03", "took <*> s at <*>-<*>-<*>"),
        ("deadbeefcafe is a word", "deadbeefcafe is a word"),  # hex letters without digits
    ],
)
def test_mask(line: str, masked: str) -> None:
    assert MASK.sub(WILDCARD, line) == masked


def test_lines_differing_in_a_token_share_a_template() -> None:
    miner = TemplateMiner()
    found = _templates(miner, ["user alice logged in", "user bob logged in", "user carol logged out"])
    assert found[0] == found[1] == found[2] == "user <*> logged <*>"
    assert miner.templates == 1


def test_similarity_threshold_separates_templates() -> None:
    lines = ["open file a b", "open file x y"]  # 2 of 4 tokens equal: similarity 0.5
    assert len(set(TemplateMiner(similarity=0.4).add_batch(lines).ids.tolist())) == 1
    assert len(set(TemplateMiner(similarity=0.6).add_batch(lines).ids.tolist())) == 2


def test_token_count_routes_to_different_templates() -> None:
    matches = TemplateMiner().add_batch(["disk full", "disk full now"])
    assert matches.ids[0] != matches.ids[1]


def test_ids_are_stable_and_created_is_reported_once() -> None:
    miner = TemplateMiner()
    first = miner.add_batch(["job 1 started", "job 2 started", "job 3 failed hard"])
    second = miner.add_batch(["job 9 started", "job 4 failed hard"])
    assert first.created.tolist() == [True, False, True]
    assert second.created.tolist() == [False, False]
    assert second.ids.tolist() == [first.ids[0], first.ids[2]]


def test_cache_does_not_change_what_is_found() -> None:
    lines = [f"task {i % 7} on host{i % 3} took {i} ms" for i in range(200)] + ["x y z"] * 5
    lines += [f"retry {i} of request {i * 31}" for i in range(50)]
    cached = TemplateMiner().add_batch(lines).ids
    uncached = TemplateMiner(cache_size=0).add_batch(lines).ids
    assert cached.tolist() == uncached.tolist()


def test_rarity_is_lower_for_frequent_templates() -> None:
    miner = TemplateMiner()
    matches = miner.add_batch(["heartbeat ok"] * 99 + ["disk on fire"])
    assert matches.rarity[0] == pytest.approx(-np.log(0.99))
    assert matches.rarity[-1] == pytest.approx(-np.log(0.01))


def test_frequency_decays_with_half_life() -> None:
    miner = TemplateMiner(half_life=100)
    miner.add_batch(["old news"] * 100)
    late = miner.add_batch(["fresh news item"] * 100)
    # after 100 more records the old count halved: 50 of 150
    old = miner.add_batch(["old news"]).rarity[0]
    assert old == pytest.approx(np.log((150 * 0.5 ** (1 / 100) + 1) / (50 * 0.5 ** (1 / 100) + 1)), rel=1e-6)
    assert late.rarity[0] < old


def test_eviction_keeps_frequent_templates_and_never_reuses_ids() -> None:
    miner = TemplateMiner(max_templates=10)
    keep = miner.add_batch(["frequent line here"] * 50).ids[0]
    rare = [f"{w}x {w}y {w}z" for w in "abcdefghijklmnopqrstuvwxyz"]  # no token in common
    ids = [int(miner.add_batch([line]).ids[0]) for line in rare]
    assert len(set(ids)) == len(ids)
    assert miner.templates <= 10
    assert miner.evicted > 0
    assert miner.template(int(keep)) == "frequent line here"
    assert miner.template(ids[0]) is None  # an early rare one was evicted
    again = miner.add_batch([rare[0]])
    assert again.created[0]
    assert int(again.ids[0]) > max(ids)


def test_snapshot_restore_round_trip() -> None:
    miner = TemplateMiner(max_templates=100)
    lines = ["user alice logged in", "user bob logged in", "disk 3 full", "disk 4 full", "ok"]
    before = miner.add_batch(lines)
    restored = TemplateMiner.restore(json.loads(json.dumps(miner.snapshot())))
    after = restored.add_batch(lines)
    assert after.ids.tolist() == before.ids.tolist()
    assert not after.created.any()
    assert restored.template(int(before.ids[0])) == "user <*> logged in"
    assert int(restored.add_batch(["something new entirely"]).ids[0]) == int(before.ids.max()) + 1
    with pytest.raises(ValueError, match="version"):
        TemplateMiner.restore({"version": 99})


def test_empty_and_whitespace_lines() -> None:
    miner = TemplateMiner()
    matches = miner.add_batch(["", "   ", "a"])
    assert matches.ids[0] == matches.ids[1]
    assert miner.add_batch([]).ids.size == 0
