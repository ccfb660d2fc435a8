"""Bradley-Terry, Elo and bootstrap intervals against hand-computed cases and a simulation."""

from __future__ import annotations

import math
import random

import pytest

from character import stats
from character.ratings import bootstrap, bradley_terry, elo
from character.types import Match


def M(a, b, w):
    return Match(a=a, b=b, winner=w)


def test_bradley_terry_two_items_matches_closed_form():
    # A beats B 3 times, B beats A once: the MLE odds are 3, i.e. 400*log10(3) = 190.85 points apart.
    r = bradley_terry([M("A", "B", "a")] * 3 + [M("A", "B", "b")], prior=0)
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert (r["A"] + r["B"]) / 2 == pytest.approx(1000, abs=1e-6)


def test_bradley_terry_ties_and_three_items():
    # a tie is half a win each: 1 win + 2 ties vs 0 wins + 2 ties -> odds 2:1
    r = bradley_terry([M("A", "B", "a"), M("A", "B", "tie"), M("A", "B", "tie")], prior=0)
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(2), abs=1e-6)
    # a consistent 3-item case: strengths 4:2:1 reproduced from exact expected counts
    ms = []
    for a, b, pa in (("x", "y", 4 / 6), ("y", "z", 2 / 3), ("x", "z", 4 / 5)):
        n = 300
        wins = round(pa * n)
        ms += [M(a, b, "a")] * wins + [M(a, b, "b")] * (n - wins)
    r = bradley_terry(ms, prior=0)
    assert r["x"] - r["y"] == pytest.approx(400 * math.log10(2), abs=1.0)
    assert r["y"] - r["z"] == pytest.approx(400 * math.log10(2), abs=1.0)


def test_prior_keeps_unbeaten_items_finite():
    r = bradley_terry([M("A", "B", "a")] * 5, prior=1.0)
    assert math.isfinite(r["A"]) and r["A"] > r["B"]


def test_elo_hand_computed():
    r = elo([M("A", "B", "a")])
    assert r == {"A": 1016.0, "B": 984.0}
    r = elo([M("A", "B", "a"), M("A", "B", "a")])
    e = 1 / (1 + 10 ** ((984 - 1016) / 400))
    assert r["A"] == pytest.approx(1016 + 32 * (1 - e))
    assert r["A"] + r["B"] == pytest.approx(2000)
    assert elo([M("A", "B", "tie")]) == {"A": 1000.0, "B": 1000.0}


def test_bootstrap_intervals_cover_the_truth():
    true = {"a": 1150.0, "b": 1050.0, "c": 950.0, "d": 850.0}
    covered = trials = 0
    for sim in range(25):
        rng = random.Random(sim)
        ms = []
        for _ in range(300):
            a, b = rng.sample(sorted(true), 2)
            pa = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
            ms.append(M(a, b, "a" if rng.random() < pa else "b"))
        for r in bootstrap(ms, rounds=60, level=0.9, seed=sim, prior=0.1):
            trials += 1
            covered += r.low <= true[r.item] <= r.high
    assert covered / trials >= 0.75  # nominal 0.9; a percentile bootstrap on 300 matches is a bit narrow


def test_one_bootstrap_for_means_and_ratings():
    """A win rate is a mean of 1/0.5/0 outcomes; the vectorised mean and the general bootstrap draw the
    same resamples, so they give the same interval."""
    outcomes = [1, 1, 1, 0, 0.5] * 20
    mean, lo, hi = stats.mean_interval(outcomes, rounds=300, seed=3)
    assert mean == pytest.approx(0.7) and lo < 0.7 < hi
    general = stats.bootstrap(outcomes, lambda xs: {"mean": sum(xs) / len(xs)}, rounds=300, seed=3)["mean"]
    assert general == pytest.approx((lo, hi))
    assert stats.mean_interval(outcomes, rounds=300, seed=3) == (mean, lo, hi)  # seeded: the same every time
    assert math.isnan(stats.mean_interval([])[0])


def test_mean_interval_covers_the_true_mean():
    rng = random.Random(5)
    covered = 0
    for _ in range(200):
        sample = [rng.gauss(2.0, 1.0) for _ in range(40)]
        _, lo, hi = stats.mean_interval(sample, rounds=400, seed=rng.randrange(10**6))
        covered += lo <= 2.0 <= hi
    assert 0.88 <= covered / 200 <= 0.99  # nominal 0.95; the percentile bootstrap at n=40 runs a little narrow


def test_cli_elo_score(tmp_path):
    from conftest import run_cli
    path = tmp_path / "matches.jsonl"
    path.write_text("".join(M("tuned", "base", w).model_dump_json() + "\n" for w in ["a", "a", "a", "b", "tie"]))
    r = run_cli("eval", "elo", "score", "--matches", str(path), "--rounds", "20")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith("tuned") and lines[2].startswith("base")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": "x"}\n')
    r = run_cli("eval", "elo", "score", "--matches", str(bad))
    assert r.returncode == 1 and "bad.jsonl:1" in r.stderr
