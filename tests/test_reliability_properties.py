"""Issue 4, property tests (hypothesis): the config parser never fails with anything but a one-line UserError
naming the key, parses what it prints, and round-trips through YAML; the split generators give exact counts,
disjoint parts and the same split for the same seed."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from finessl_lab.config import Config, iter_leaves, parse_set
from finessl_lab.data.splits import (cached_split, longtail_counts, make_longtail_split, make_openset_split,
                                     make_split)
from finessl_lab.errors import UserError
from finessl_lab.presets import resolve

LEAVES = {key: (value, f) for key, value, f in iter_leaves(Config())}
TYPES = {key: type(value) for key, (value, _) in LEAVES.items()}
SETTINGS = settings(max_examples=60, deadline=None)
TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x24F), max_size=12)


def valid_value(key: str):
    """A strategy of values valid for one leaf on its own (ranges, choices, types)."""
    value, f = LEAVES[key]
    meta, typ = f.metadata, TYPES[key]
    if typ is bool:
        return st.booleans()
    if meta.get("choices"):
        return st.sampled_from(meta["choices"])
    if typ is int:
        lo = int(meta["lo"]) + (1 if meta["lo_open"] else 0) if meta.get("lo") is not None else -10**6
        hi = int(meta["hi"]) - (1 if meta["hi_open"] else 0) if meta.get("hi") is not None else lo + 10**6
        return st.integers(lo, hi)
    if typ is float:
        lo = meta.get("lo") if meta.get("lo") is not None else -1e6
        hi = meta.get("hi") if meta.get("hi") is not None else 1e6
        return st.floats(lo, hi, exclude_min=bool(meta.get("lo_open")), exclude_max=bool(meta.get("hi_open")),
                         allow_nan=False, allow_infinity=False)
    if key == "run.device":
        return st.sampled_from(["auto", "cpu", "cuda", "cuda:1", "mps"])
    if key == "model.prompt_template":
        return st.tuples(TEXT, TEXT).map(lambda ab: ab[0] + "{}" + ab[1])
    return TEXT


def as_cli_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


assignments = st.lists(st.sampled_from(sorted(LEAVES)).flatmap(lambda k: st.tuples(st.just(k), valid_value(k))),
                       max_size=8)


@SETTINGS
@given(assignments)
def test_set_from_cli_text_equals_typed_value_and_round_trips_through_yaml(pairs):
    typed, parsed = Config(), Config()
    for key, value in pairs:
        typed.set(key, value)
        parsed.set(*parse_set(f"{key}={as_cli_text(value)}"))
    assert parsed == typed
    for key, value in dict(pairs).items():
        got = dict((k, v) for k, v, _ in iter_leaves(parsed))[key]
        assert got == value and type(got) is TYPES[key]
    assert Config.from_dict(parsed.to_dict()) == parsed
    import yaml

    assert Config.from_dict(yaml.safe_load(parsed.to_yaml())) == parsed


@SETTINGS
@given(st.sampled_from(sorted(LEAVES)), st.one_of(TEXT, st.sampled_from(["", " ", "nan", "inf", "-inf", "1e999", "0x10",
                                                                             "1.5", "-1", "True", "none", "{}"])))
def test_any_text_for_any_key_parses_or_gives_a_one_line_error_naming_the_key(key, text):
    cfg = Config()
    try:
        cfg.set(key, text)
        cfg.validate()
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg and "valid" in msg
        assert key.split(".")[-1] in msg or repr(text.strip()) in msg or repr(text) in msg  # names key or value
    # anything but UserError propagates and fails the test


@SETTINGS
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=20), min_size=1, max_size=3)
       .map(".".join))
def test_unknown_keys_are_refused_with_a_suggestion_list(dotted):
    assume(dotted.strip() not in LEAVES)
    with pytest.raises(UserError) as info:
        Config().set(dotted, "1")
    msg = str(info.value)
    assert "\n" not in msg and ("unknown config key" in msg or "must look like section.key" in msg)


json_like = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), TEXT),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                         max_leaves=8)
known_names = st.sampled_from(sorted({part for k in LEAVES for part in k.split(".")}))


@SETTINGS
@given(st.dictionaries(st.one_of(known_names, TEXT),
                       st.one_of(json_like, st.dictionaries(st.one_of(known_names, TEXT), json_like, max_size=4)),
                       max_size=5))
def test_any_yaml_mapping_loads_or_gives_a_one_line_error(d):
    try:
        Config.from_dict(d).validate()
    except UserError as e:
        assert "\n" not in str(e)


numeric = sorted(k for k in LEAVES if TYPES[k] in (int, float) and LEAVES[k][1].metadata.get("lo") is not None)


@SETTINGS
@given(st.sampled_from(numeric), st.floats(1e-3, 1e6), st.booleans())
def test_values_outside_a_range_are_refused_naming_key_and_range(key, delta, below):
    meta = LEAVES[key][1].metadata
    if not below and meta.get("hi") is None:
        below = True
    bound = meta["lo"] if below else meta["hi"]
    value = bound - delta if below else bound + delta
    if TYPES[key] is int:
        value = math.floor(value) if below else math.ceil(value)
    cfg = Config()
    with pytest.raises(UserError) as info:
        cfg.set(key, value)
        cfg.validate()
    assert f"{key}=" in str(info.value) and "out of range; valid:" in str(info.value)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(sorted(k for k in LEAVES if TYPES[k] is float)), valid_value("optim.lr"), valid_value("optim.lr"))
def test_precedence_file_then_flags_then_set(key, a, b):
    cfg = resolve("embedded", None, {"optim.lr": a}, [f"optim.lr={b!r}"])
    assert cfg.optim.lr == b
    assert resolve("embedded", None, {"optim.lr": a}).optim.lr == a


# -- splits -------------------------------------------------------------------------------------------------------
@st.composite
def datasets(draw, max_classes=6, max_size=25):
    sizes = draw(st.lists(st.integers(1, max_size), min_size=1, max_size=max_classes))
    targets = np.repeat(np.arange(len(sizes)), sizes)
    order = draw(st.permutations(range(len(targets))))
    return targets[np.asarray(order, dtype=np.int64)], len(sizes)


@SETTINGS
@given(datasets(), st.integers(1, 8), st.integers(0, 5), st.booleans(), st.integers(0, 2**31 - 1))
def test_make_split_counts_disjointness_and_determinism(data, n, v, include, seed):
    t, c = data
    sizes = np.bincount(t, minlength=c)
    if n + v > sizes.min():
        with pytest.raises(UserError) as info:
            make_split(t, c, n, val_per_class=v, include_labeled_in_unlabeled=include, seed=seed)
        assert "\n" not in str(info.value) and "maximum valid labels_per_class" in str(info.value)
        return
    s = make_split(t, c, n, val_per_class=v, include_labeled_in_unlabeled=include, seed=seed)
    for part in (s.labeled, s.unlabeled, s.val):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)  # sorted, no duplicates
    assert (np.bincount(t[s.labeled], minlength=c) == n).all()
    assert (np.bincount(t[s.val], minlength=c) == v).all()
    lab, unl, val = set(s.labeled), set(s.unlabeled), set(s.val)
    assert not lab & val and not unl & val
    if include:
        assert lab <= unl and unl | val == set(range(len(t)))
    else:
        assert not lab & unl and lab | unl | val == set(range(len(t)))
    again = make_split(t, c, n, val_per_class=v, include_labeled_in_unlabeled=include, seed=seed)
    assert all(np.array_equal(getattr(s, k), getattr(again, k)) for k in ("labeled", "unlabeled", "val"))
    if n + 1 + v <= sizes.min():  # nested in N, and the same validation images whatever N
        bigger = make_split(t, c, n + 1, val_per_class=v, include_labeled_in_unlabeled=include, seed=seed)
        assert lab <= set(bigger.labeled) and np.array_equal(bigger.val, s.val)


@SETTINGS
@given(datasets(max_classes=4), st.integers(1, 5), st.integers(0, 2**31 - 1), st.integers(1, 10))
def test_a_class_split_does_not_depend_on_other_classes(data, n, seed, extra):
    t, c = data
    assume(n <= np.bincount(t).min())
    alone = make_split(t, c, n, seed=seed)
    more = make_split(np.concatenate([t, np.full(n + extra, c)]), c + 1, n, seed=seed)
    assert np.array_equal(more.labeled[more.labeled < len(t)], alone.labeled)


@SETTINGS
@given(st.integers(2, 6), st.integers(1, 6), st.integers(0, 10), st.floats(1, 20), st.integers(0, 1000), st.booleans())
def test_longtail_split_follows_its_counts(c, n_max, u_max, ratio, seed, include):
    t = np.repeat(np.arange(c), n_max + u_max + 2)
    s = make_longtail_split(t, c, n_max, u_max, imbalance_ratio=ratio, include_labeled_in_unlabeled=include, seed=seed)
    expected = [max(k, 1) for k in longtail_counts(n_max, c, ratio)]
    assert np.bincount(t[s.labeled], minlength=c).tolist() == expected
    assert expected == sorted(expected, reverse=True)
    extra = np.bincount(t[np.setdiff1d(s.unlabeled, s.labeled)], minlength=c)
    assert (extra == np.asarray(longtail_counts(u_max, c, ratio))).all()
    assert set(s.labeled) <= set(s.unlabeled) if include else not set(s.labeled) & set(s.unlabeled)


@SETTINGS
@given(datasets(max_classes=5), st.integers(1, 3), st.data())
def test_openset_split_labels_only_seen_classes(data, n, draw):
    t, c = data
    seen = draw.draw(st.lists(st.integers(0, c - 1), min_size=1, unique=True), label="seen")
    assume(n <= np.bincount(t, minlength=c)[seen].min())
    s = make_openset_split(t, c, n, seen, seed=draw.draw(st.integers(0, 99), label="seed"))
    assert set(np.unique(t[s.labeled])) == set(seen)
    assert np.array_equal(s.ood, ~np.isin(t, seen))
    assert set(np.flatnonzero(s.ood)) <= set(s.unlabeled)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(datasets(max_classes=4), st.integers(1, 3), st.integers(0, 50))
def test_cached_split_is_the_computed_split_and_survives_a_damaged_file(tmp_path, data, n, seed):
    t, c = data
    assume(n <= np.bincount(t).min())
    first = cached_split(tmp_path, "prop", t, c, n, seed=seed)
    assert np.array_equal(first.labeled, make_split(t, c, n, seed=seed).labeled)
    for f in (tmp_path / "splits").glob("*.json"):
        f.write_text("{ truncated")
    again = cached_split(tmp_path, "prop", t, c, n, seed=seed)
    assert np.array_equal(again.labeled, first.labeled) and np.array_equal(again.unlabeled, first.unlabeled)
