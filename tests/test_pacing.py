"""Pacing schedules: every reference value in DESIGN.md, monotonicity, reaching 1, round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curriculum import pacing as P


def test_linear_platanios_reference():
    p = P.Linear(start=0.01, steps=1000)
    assert round(p(250), 4) == 0.2575
    assert round(p(500), 4) == 0.505
    assert p(1000) == 1.0 and p(5000) == 1.0


def test_root_platanios_reference():
    p = P.Root(start=0.01, steps=1000)
    got = [round(p(t), 4) for t in (0, 10, 250, 500, 1000)]
    assert got == [0.01, 0.1005, 0.5001, 0.7071, 1.0]


def test_root_uses_pth_root_not_always_sqrt():
    p3 = P.Root(start=0.01, steps=1000, degree=3)
    c0p = 0.01 ** 3
    assert p3(500) == pytest.approx((500 * (1 - c0p) / 1000 + c0p) ** (1 / 3))
    assert p3(500) != pytest.approx(P.Root(start=0.01, steps=1000, degree=2)(500))


def test_exponential_hacohen_reference():
    p = P.Exponential(start=0.04, inc=1.9, step_length=100)
    got = [p.admitted(b, 50_000) for b in (0, 100, 200, 300, 400, 500, 600)]
    assert got == [2000, 3800, 7220, 13718, 26065, 49522, 50000]
    assert p.end_step == 600


def test_deepspeed_fixed_root_reference():
    p = P.FixedRoot(1, 100, 110_000, difficulty_step=1, degree=2)
    assert [p.difficulty(s) for s in (1, 1000, 27500, 55000, 110000)] == [1, 10, 50, 71, 100]


def test_deepspeed_fixed_linear_reference():
    p = P.FixedLinear(8, 1024, 30_000, difficulty_step=8)
    assert [p.difficulty(s) for s in (100, 15000, 29999, 30000)] == [8, 512, 1016, 1024]
    assert p(30000) == 1.0


def test_deepspeed_fixed_discrete_reference():
    p = P.FixedDiscrete([1, 2, 3], [5, 10])
    assert [p.difficulty(s) for s in (5, 6, 11)] == [1, 2, 3]
    assert p(11) == 1.0


WU = {
    "linear": [10000, 20000, 30000, 50000],
    "quad": [10000, 12500, 20000, 50000],
    "root": [10000, 30000, 38284, 50000],
    "exp": [10000, 10020, 10267, 50000],
    "log": [10000, 44455, 47227, 50000],
}


@pytest.mark.parametrize("kind", sorted(WU))
def test_wu_family_reference(kind):
    p = P.Wu(kind, b=0.2, a=0.8, total_steps=1000, c=10)
    assert [p.admitted(s, 50_000) for s in (0, 200, 400, 800)] == WU[kind]


def test_wu_step():
    p = P.Wu("step", b=0.2, a=0.8, total_steps=1000)
    assert [p.admitted(s, 50_000) for s in (0, 799, 800)] == [10000, 10000, 50000]


ALL = [
    P.Linear(0.1, 300), P.Root(0.05, 300, degree=3), P.Exponential(0.04, 1.9, 20), P.FixedLinear(8, 1024, 300, 8),
    P.FixedRoot(1, 100, 300, 1, 2), P.FixedDiscrete([1, 2, 4], [50, 150]),
    *[P.Wu(k, 0.2, 0.8, 300) for k in P.Wu.KINDS], P.Cosine(0.1, 300), P.Constant(1.0),
]


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_monotone_and_reaches_one_by_end(p):
    c = p.curve(range(0, 400))
    assert (np.diff(c) >= -1e-12).all()
    assert (c > 0).all() and (c <= 1).all()
    assert p(p.end_step) == 1.0


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_config_roundtrip_and_repr(p):
    q = P.from_config(p.to_config())
    assert q == p and repr(q) == repr(p)
    assert all(p(s) == q(s) for s in (0, 7, 100, 299, 1000))


def halfway(t):
    return min(1.0, 0.2 + t / 50)


def test_callable_roundtrip_and_checks():
    p = P.FromCallable(halfway, steps=40)
    assert P.from_config(p.to_config())(10) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="never admits all data"):
        P.FromCallable(lambda t: 0.5, steps=10)
    with pytest.raises(ValueError, match=r"competence in \(0, 1\]"):
        P.FromCallable(lambda t: -1.0, steps=10)


@pytest.mark.parametrize("make,match", [
    (lambda: P.Linear(start=0.0, steps=10), "start"),
    (lambda: P.Linear(start=0.1, steps=0), "steps"),
    (lambda: P.Root(start=0.1, steps=-5), "steps"),
    (lambda: P.Exponential(start=0.1, inc=1.0, step_length=10), "inc"),
    (lambda: P.Exponential(start=0.1, inc=2, step_length=0), "step_length"),
    (lambda: P.FixedLinear(8, 100, 1000, difficulty_step=8), "never reach full"),
    (lambda: P.FixedLinear(100, 8, 1000), "max_difficulty"),
    (lambda: P.FixedDiscrete([1, 2], [5, 6]), "max_step"),
    (lambda: P.Constant(0.5), "partial=True"),
    (lambda: P.SelfPaced(1.0, growth=1.0), "growth"),
    (lambda: P.Wu("cubic"), "kind"),
    (lambda: P.from_config({"name": "nope"}), "unknown pacing"),
])
def test_bad_schedules_fail_at_construction(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_negative_step_rejected():
    with pytest.raises(ValueError, match="step"):
        P.Linear(0.1, 10)(-1)


def test_self_paced_threshold_grows():
    p = P.SelfPaced(lambda0=0.5, growth=2.0)
    assert [p.threshold(e) for e in range(3)] == [0.5, 1.0, 2.0]
    assert p.admit(np.array([0.1, 0.7, 3.0]), 1).tolist() == [True, True, False]
    assert P.from_config(p.to_config()) == p


@settings(max_examples=50, deadline=None)
@given(start=st.floats(0.001, 1.0), steps=st.integers(1, 10_000), degree=st.floats(0.5, 5),
       n=st.integers(1, 10**7), t=st.integers(0, 20_000))
def test_property_root_admitted_matches_ceil(start, steps, degree, n, t):
    p = P.Root(start, steps, degree)
    c = p(t)
    assert 0 < c <= 1
    a = p.admitted(t, n)
    assert 1 <= a <= n
    assert abs(a - max(1, math.ceil(c * n))) <= 1
    assert p(steps) == 1.0
