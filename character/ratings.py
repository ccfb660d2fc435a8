"""Ratings from head-to-head matches: Bradley-Terry maximum likelihood with bootstrap intervals
(the main view), and the seeds' online Elo (a secondary view).

    character eval elo score --matches FILE.jsonl [--k-factor 32] [--rounds 100]

Scale for both: 400 points per factor of 10 in odds, 1000 as the anchor (for Bradley-Terry, the
mean rating is 1000). A tie counts as half a win for each side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import stats
from .types import Match

SCALE = 400 / math.log(10)  # rating points per unit of log-strength


@dataclass
class Rating:
    item: str
    rating: float
    low: float | None = None
    high: float | None = None
    matches: int = 0


def _outcomes(matches: list[Match]) -> list[tuple[str, str, float]]:
    """(a, b, score of a): the match's soft score when it has one, else 1 win, 0 loss, 0.5 tie."""
    return [(m.a, m.b, m.outcome) for m in matches]


def bradley_terry(matches: list[Match], prior: float = 1.0, iters: int = 500, tol: float = 1e-10) -> dict[str, float]:
    """Maximum-likelihood (MAP with `prior`) ratings by the MM algorithm (Hunter, 2004).

    `prior` adds that many virtual wins and losses of each item against a reference of average
    strength, so an item that won (or lost) every match still gets a finite rating; prior=0 is
    the plain MLE."""
    items = sorted({m.a for m in matches} | {m.b for m in matches})
    wins = {i: prior for i in items}
    pairs: dict[tuple[str, str], float] = {}
    for a, b, s in _outcomes(matches):
        wins[a] += s
        wins[b] += 1 - s
        key = (a, b) if a < b else (b, a)
        pairs[key] = pairs.get(key, 0) + 1
    p = {i: 1.0 for i in items}
    for _ in range(iters):
        denom = {i: 2 * prior / (p[i] + 1.0) for i in items}  # virtual games vs the reference (strength 1)
        for (x, y), n in pairs.items():
            share = n / (p[x] + p[y])
            denom[x] += share
            denom[y] += share
        new = {i: wins[i] / denom[i] if denom[i] > 0 else p[i] for i in items}
        g = math.exp(sum(math.log(max(v, 1e-300)) for v in new.values()) / len(new))
        new = {i: v / g for i, v in new.items()}
        delta = max(abs(math.log(max(new[i], 1e-300)) - math.log(max(p[i], 1e-300))) for i in items)
        p = new
        if delta < tol:
            break
    return {i: 1000 + SCALE * math.log(max(v, 1e-300)) for i, v in p.items()}


def bootstrap(matches: list[Match], rounds: int = 100, level: float = 0.95, seed: int = 0,
              prior: float = 1.0) -> list[Rating]:
    """Bradley-Terry ratings with percentile intervals from `rounds` resamples of the matches (stats.bootstrap).
    An item that no match of a resample involves gets no rating from that round (its interval comes from the
    rounds that saw it)."""
    point = bradley_terry(matches, prior)
    bounds = stats.bootstrap(matches, lambda ms: bradley_terry(ms, prior), rounds=rounds, level=level, seed=seed)
    counts = {i: 0 for i in point}
    for m in matches:
        counts[m.a] += 1
        counts[m.b] += 1
    out = [Rating(item=i, rating=r, low=bounds.get(i, (None, None))[0], high=bounds.get(i, (None, None))[1],
                  matches=counts[i]) for i, r in point.items()]
    return sorted(out, key=lambda x: -x.rating)


def elo(matches: list[Match], k: float = 32.0, start: float = 1000.0) -> dict[str, float]:
    """The seeds' online Elo, in match order."""
    r: dict[str, float] = {}
    for a, b, s in _outcomes(matches):
        ra, rb = r.setdefault(a, start), r.setdefault(b, start)
        expected = 1 / (1 + 10 ** ((rb - ra) / 400))
        r[a] = ra + k * (s - expected)
        r[b] = rb - k * (s - expected)
    return r


