"""Completions: the opening of a held-out utterance, continued by each agent's model; how close each continuation
is to what the agent really said.

- Embedding similarity: cosine of the shipped MiniLM's sentence embeddings of the continuation and the real one.
- A pairwise judge: for each opening of agent A, A's own model against each other agent's model: "which
  continuation is closer to what was really said?" The judge reads the labels' probabilities in both orders and
  averages them (position bias cancels). It is calibrated first on known pairs, the real continuation against
  another agent's real words; a judge that does not beat chance there is shown as "no signal". The matches give
  Bradley-Terry ratings with bootstrap intervals, per agent's openings.

    agents/<cohort>/eval/<point>/completions.jsonl   one row per (opening, model): continuation and similarity
    agents/<cohort>/eval/<point>/completions.json    similarity per agent and model, calibration, ratings
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import CharacterError
from ..inference import get_backend, release_backend
from ..judges import calibrate, label_probs, outcome
from ..ratings import bootstrap as bt_bootstrap
from ..runs import write_json, write_jsonl
from ..scorers import Embedder
from ..stats import mean_interval
from ..types import Match, Message, Record, SamplingParams
from . import cohort
from .corpus import Utterance
from .measure import conversation, model_specs
from .train import point_id

OPENING_WORDS = 12
MIN_REST_WORDS = 8


class CompletionRow(Record):
    agent: str  # whose words the opening is
    utterance: str
    model: str
    opening: str
    real: str
    continuation: str
    similarity: float


def openings(held: list[Utterance], per_agent: int, seed: int) -> list[tuple[Utterance, str, str]]:
    """Up to `per_agent` held-out utterances per agent long enough to cut: (utterance, opening, real rest)."""
    out = []
    for agent in sorted({u.agent for u in held}):
        mine = [u for u in held if u.agent == agent and len(u.text.split()) >= OPENING_WORDS + MIN_REST_WORDS]
        random.Random(f"{seed}:{agent}").shuffle(mine)
        for u in mine[:per_agent]:
            words = u.text.split()
            out.append((u, " ".join(words[:OPENING_WORDS]), " ".join(words[OPENING_WORDS:])))
    return out


def judge_prompt(agent_opening: str, real: str, first: str, second: str) -> list[Message]:
    return [Message(role="system", content="You compare texts carefully and answer with one letter."),
            Message(role="user", content=f"Someone began: \"{agent_opening} ...\"\nWhat they really said next: "
                    f"\"{real}\"\n\nWhich continuation is closer to what they really said, in content and in "
                    f"style?\nA: \"{first}\"\nB: \"{second}\"\nAnswer A or B.")]


def prefer_first(judge, items: list[tuple[str, str, str, str]]) -> tuple[list[float], list[float]]:
    """P(first is closer) per (opening, real, first, second), averaged over both orders; and the judge's raw share
    for whatever is shown first (0.5 = no position bias)."""
    fwd = label_probs(judge, [judge_prompt(o, r, x, y) for o, r, x, y in items], ["A", "B"])
    rev = label_probs(judge, [judge_prompt(o, r, y, x) for o, r, x, y in items], ["A", "B"])
    return ([(f["A"] + b["B"]) / 2 for f, b in zip(fwd, rev, strict=True)],
            [(f["A"] + b["A"]) / 2 for f, b in zip(fwd, rev, strict=True)])


def run_completions(cfg: cohort.CohortConfig, point: dict, out: Path, per_agent: int = 4, max_tokens: int = 40,
                    judge_spec: str | None = None) -> dict:
    """Continuations by every trained agent model of up to `per_agent` held-out openings per agent, their
    similarity to the real words, and the calibrated pairwise judge's matches and ratings (see the module)."""
    cdir = cohort.imported(cfg)
    _, held = cohort.train_held(cdir)
    cuts = openings(held, per_agent, cfg.seed)
    specs = {m: s for m, s in model_specs(cfg, point).items() if m != "base"}
    if not cuts or not specs:
        raise CharacterError(f"cohort={cfg.name!r}: no held-out utterance of {OPENING_WORDS + MIN_REST_WORDS} words or "
                             "more to cut, or no trained agent; train first, or skip --sections completions")
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=cfg.seed)
    texts: dict[str, list[str]] = {}
    for name, spec in specs.items():  # each model continues every opening, in the assistant's own turn
        backend = get_backend(spec)
        convs = [conversation(u, cfg.name) + [Message(role="assistant", content=o)] for u, o, _ in cuts]
        texts[name] = [c[0].text.strip() for c in backend.generate(convs, params)]
        release_backend(spec)
    embed = Embedder()
    real_vecs = embed([r for _, _, r in cuts])
    records = []
    for name, conts in texts.items():
        sims = np.sum(embed([c or "." for c in conts]) * real_vecs, axis=1)
        records += [CompletionRow(agent=u.agent, utterance=u.id, model=name, opening=o, real=r, continuation=c,
                               similarity=float(s)) for (u, o, r), c, s in zip(cuts, conts, sims, strict=True)]
    write_jsonl(out / "completions.jsonl", records)
    similarity = {a: {m: dict(zip(("mean", "low", "high"), mean_interval(
        [x.similarity for x in records if x.agent == a and x.model == m], seed=cfg.seed), strict=True))
        for m in texts} for a in sorted({u.agent for u, _, _ in cuts})}
    # the judge: calibrated on known pairs (the real words against another agent's words), then the matches
    judge = get_backend(judge_spec or cfg.base)
    known = []  # the better side: the first half of the real words (not a copy of what the prompt quotes)
    for u, o, r in cuts:
        other = [x for x in held if x.agent != u.agent and len(x.text.split()) >= MIN_REST_WORDS]
        if other:
            half = r.split()[:max(4, len(r.split()) // 2)]
            decoy = random.Random(f"{cfg.seed}:{u.id}").choice(other).text.split()[:len(half)]
            known.append((o, r, " ".join(half), " ".join(decoy)))
    p_known, first_known = prefer_first(judge, known)
    cal = calibrate("completion", judge_spec or cfg.base, "labels", [outcome(p) for p in p_known], first_known)
    pairs = []
    for i, (u, o, r) in enumerate(cuts):
        if u.agent in texts:
            for m in texts:
                if m != u.agent:
                    pairs.append((i, u.agent, m))
    p_own, _ = prefer_first(judge, [(cuts[i][1], cuts[i][2], texts[a][i], texts[m][i]) for i, a, m in pairs])
    matches = {a: [] for a in texts}
    for (i, a, m), p in zip(pairs, p_own, strict=True):
        matches[a].append(Match(prompt=cuts[i][0].id, a=a, b=m, winner="a" if p > 0.5 else "b" if p < 0.5 else "tie",
                                score=p))
    ratings = {a: [asdict(r) for r in bt_bootstrap(ms, seed=cfg.seed)] if ms else [] for a, ms in matches.items()}
    own_wins = {a: sum(m.winner == "a" for m in ms) / len(ms) if ms else None for a, ms in matches.items()}
    result = {"point": point_id(cfg, point), "openings": len(cuts), "similarity": similarity,
              "calibration": cal.model_dump(), "own_model_win_share": own_wins, "ratings": ratings}
    write_json(out / "completions.json", result)
    return result


def format_completions(r: dict) -> str:
    cal = r["calibration"]
    lines = [f"completions of {r['openings']} held-out openings: embedding similarity to the real words (mean [95%])"]
    for a, per in r["similarity"].items():
        lines.append(f"  {a}: " + "; ".join(f"{m} {v['mean']:.2f} [{v['low']:.2f}, {v['high']:.2f}]" for m, v in per.items()))
    acc = "" if cal["accuracy"] is None else f"{cal['accuracy']:.2f} [{cal['low']:.2f}, {cal['high']:.2f}] on {cal['n']} known pairs"
    lines.append(f"judge calibration: {'passed' if cal['passed'] else 'no signal'} {acc}")
    if cal["passed"]:
        for a, share in r["own_model_win_share"].items():
            if share is not None:
                lines.append(f"  {a}'s own model judged closer than another agent's in {share:.0%} of matches")
    return "\n".join(lines)
