"""soundmon.jsonfast (the per-frame JSON) and the memo in workers.rules.load."""

from __future__ import annotations

import json
import math

import numpy as np

from soundmon import jsonfast
from soundmon.settings import Settings
from workers import rules


def test_same_text_as_compact_json_for_ordinary_data() -> None:
    data = {"device": "d1", "t_ms": 1796529908704, "laeq": 61.25, "flags": ["clipped"],
            "bands": [[20, -3.5], [25, None]], "ok": True, "n": None}
    assert jsonfast.dumps(data) == json.dumps(data, separators=(",", ":"))
    assert jsonfast.loads(jsonfast.dumps(data)) == data


def test_floats_round_trip_exactly() -> None:
    """Filter state goes through this: a digit lost would be a transient at a frame edge."""
    values = np.random.default_rng(1).standard_normal(200).tolist() + [1e-300, 5e-324]
    assert jsonfast.loads(jsonfast.dumps(values)) == values


def test_numpy_values_and_non_string_keys_and_nan() -> None:
    text = jsonfast.dumps({"a": np.float32(1.25), "b": np.int64(3), "c": np.arange(3),
                           2: math.nan, "d": math.inf})
    assert json.loads(text) == {"a": 1.25, "b": 3, "c": [0, 1, 2], "2": None, "d": None}


class _Store:
    def __init__(self) -> None:
        self.sets: dict[str, dict] = {}
        self.reads = 0

    def rule_sets(self, scopes: list[str]) -> dict[str, dict | None]:
        self.reads += 1
        return {scope: self.sets.get(scope) for scope in scopes}


def test_rules_load_sees_every_edit_at_once() -> None:
    store, s = _Store(), Settings()
    first = rules.load(store, "dev", s)
    assert rules.load(store, "dev", s) is first  # built once
    store.sets["dev"] = {"level": {"max_db": 70}}
    assert rules.load(store, "dev", s).level.max_db == 70
    store.sets[""] = {"level": {"min_db": 50}}
    both = rules.load(store, "dev", s)
    assert (both.level.min_db, both.level.max_db) == (50, 70)
    assert rules.load(store, "other", s).level.max_db == s.level_max_db
    del store.sets["dev"]
    assert rules.load(store, "dev", s).level.max_db == s.level_max_db
    assert rules.load(store, "dev", Settings(level_max_db=85)).level.max_db == 85
    assert store.reads == 7  # the stored sets are read on every call
    many = rules.load_many(store, ["dev", "other"], s)
    assert store.reads == 8 and many["dev"] is rules.load(store, "dev", s)  # one read for all


def test_rules_load_skips_an_override_that_no_longer_validates() -> None:
    store = _Store()
    store.sets["dev"] = {"level": {"min_db": 90, "max_db": 10}}
    assert rules.load(store, "dev", Settings()).level.max_db == Settings().level_max_db
