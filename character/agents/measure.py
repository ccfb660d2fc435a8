"""How well each agent's model is that agent: perplexity on every agent's held-out words, and votes read from the
probabilities of yes and no. Both use the library's one response scorer (`Backend.logprobs`).

    agents/<cohort>/eval/<point>/perplexity.json   model x agent: per-token perplexity with a bootstrap interval
    agents/<cohort>/eval/<point>/perplexity.png    the same as a heatmap
    agents/<cohort>/eval/<point>/votes.jsonl       one row per (model, agent, motion): p(yes), the recorded vote
    agents/<cohort>/eval/<point>/votes.json        accuracy per agent and method, with intervals and baselines
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, Field

from ..errors import CharacterError
from ..inference import get_backend, release_backend
from ..inference.structured import StructuredFailure, generate_structured_batch
from ..runs import read_json, read_status, write_json, write_jsonl
from ..stats import bootstrap, wilson
from ..types import Message, Record, SamplingParams
from . import cohort
from .corpus import Motion, Utterance
from .train import SYSTEM, as_example, model_dir, point_id

PROMPTED_QUOTES = 5


class VoteRow(Record):
    method: str
    agent: str
    motion: str
    p_yes: float
    vote: str
    recorded: str


def conversation(u: Utterance, cohort_name: str) -> list[Message]:
    return as_example(u, cohort_name).messages[:-1]


def token_logprobs(backend, rows: list[Utterance], cohort_name: str) -> list[list[float]]:
    return backend.logprobs([conversation(u, cohort_name) for u in rows], [u.text for u in rows])


def perplexity(lps: list[list[float]], rounds: int = 1000, seed: int = 0) -> dict:
    """Per-token perplexity over the rows (total negative log-prob / total tokens), the interval from
    resampling rows."""
    def stat(sample):
        n = sum(len(x) for x in sample)
        return {"ppl": math.exp(-sum(sum(x) for x in sample) / n) if n else math.nan}
    if not lps:  # an agent with nothing held out
        return {"perplexity": math.nan, "low": math.nan, "high": math.nan, "tokens": 0, "rows": 0}
    point = stat(lps)["ppl"]
    lo, hi = bootstrap(lps, stat, rounds=rounds, seed=seed)["ppl"]
    return {"perplexity": point, "low": lo, "high": hi, "tokens": sum(len(x) for x in lps), "rows": len(lps)}


def diagonal_wins(matrix: dict[str, dict[str, dict]], agents: list[str]) -> list[str]:
    """The agents whose own model has the lowest perplexity on their held-out words among all models."""
    return [a for a in agents if a in matrix and not math.isnan(matrix[a][a]["perplexity"]) and
            min((m for m in matrix if not math.isnan(matrix[m][a]["perplexity"])),
                key=lambda m: matrix[m][a]["perplexity"]) == a]


class QuestionDraft(BaseModel):
    patterns: ClassVar[dict[str, str]] = {"question": r"(Do you|Should|Will you|Would you)( [A-Za-z0-9',$%.-]{1,24}){2,40}\?"}
    question: str = Field(description="the yes/no question put to a member voting on the motion")


def vote_question(m: Motion, written: dict[str, str] | None = None) -> str:
    """The question put to a voter: the table's own, else one a model wrote from the motion, else the motion."""
    q = m.question or (written or {}).get(m.id) or f"A motion is put to the vote: {m.title}. {m.context}".strip()
    return q + "\nDo you vote yes or no? Answer yes or no."


def write_vote_questions(cfg: cohort.CohortConfig, motions: list[Motion], out: Path, model: str | None = None) -> dict:
    """For motions the table gives no question: one written by `model` (default the base) from the title and
    context, under the question's pattern; kept in `out` (eval/vote_questions.json) and reused for that model.
    A motion whose question could not be written keeps its title and context (counted)."""
    spec = model or cfg.base
    path = out / "vote_questions.json"
    saved = read_json(path) if path.exists() else {}
    same_model = saved.get("model") == spec
    kept = saved["questions"] if same_model else {}
    todo = [m for m in motions if not m.question and m.id not in kept]
    if same_model and not todo:
        return saved
    backend = get_backend(spec)
    convs = [[Message(role="system", content="You write the questions put to council members when they vote."),
              Message(role="user", content=f"Motion: {m.title}. {m.context}\nWrite the yes/no question a member "
                      "answers when voting on it.")] for m in todo]
    got = generate_structured_batch(backend, convs, QuestionDraft,
                                    SamplingParams(max_tokens=80, temperature=0.3, seed=cfg.seed), retries=1)
    written = {**{k: v for k, v in kept.items() if any(m.id == k for m in motions)},
               **{m.id: g.question for m, g in zip(todo, got, strict=True) if not isinstance(g, StructuredFailure)}}
    without = [m for m in motions if not m.question]
    result = {"model": spec, "questions": written, "failed": len(without) - len(written),
              "from_table": len(motions) - len(without)}
    write_json(path, result)
    return result


def p_yes(backend, conversations: list[list[Message]]) -> list[float]:
    """P(yes) against no, from the log-probabilities of the two answers: never a parsing failure."""
    n = len(conversations)
    lps = backend.logprobs(conversations + conversations, ["Yes"] * n + ["No"] * n)
    yes, no = [sum(x) for x in lps[:n]], [sum(x) for x in lps[n:]]
    return [_sigmoid(a - b) for a, b in zip(yes, no, strict=True)]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def majority_baseline(motions: list[Motion], agent: str) -> list[str]:
    """Every motion the agent voted on predicted by the agent's majority vote over all of them (yes on a tie): the
    score of always guessing their usual vote. (Leaving the motion itself out, as an out-of-sample guess would, is
    degenerate for an evenly split member: each left-out vote tips the rest against it, and it scores 0.)"""
    votes = [m.votes[agent] for m in motions if agent in m.votes]
    usual = "yes" if votes.count("yes") >= votes.count("no") else "no"
    return [usual] * len(votes)


def accuracy(correct: list[bool]) -> dict:
    n, k = len(correct), sum(correct)
    lo, hi = wilson(k, n) if n else (math.nan, math.nan)
    return {"accuracy": k / n if n else math.nan, "low": lo, "high": hi, "n": n}


def prompted_system(agent: str, words: list[Utterance]) -> str:
    quotes = "\n".join(f"- {u.text}" for u in words[:PROMPTED_QUOTES])
    return f"You are {agent}. Some things you have said:\n{quotes}\n{SYSTEM}"


def model_specs(cfg: cohort.CohortConfig, point: dict) -> dict[str, str]:
    """'base' and each agent's trained, merged model at this grid point (those finished). A model trained on
    another split than the current one is refused: its held-out words may be its training words."""
    split = cohort.read_split(cohort.imported(cfg))
    specs = {"base": cfg.base}
    for a in cohort.agent_names(cfg):
        d = model_dir(cfg, a, point)
        st = read_status(d)
        if st and st.state == "done":
            if st.settings.get("split") != split.train.get(a, []):
                raise CharacterError(f"agent={a!r}: its model in {d} was trained on another split than the cohort's "
                                     f"now; train it again: character agents train RECIPE --only \"{a}\"")
            specs[a] = f"hf/{d / 'model'}"
    return specs


def unseen_motions(motions: list[Motion], train: list[Utterance], agent: str) -> set[str]:
    """Dated motions decided on a day none of the agent's training words come from (their debate is not in the
    training text). Undated motions are in neither set: nothing says where they were debated."""
    days = {u.date for u in train if u.agent == agent and u.date}
    return {m.id for m in motions if m.date and m.date not in days}


def run_perplexity(cfg: cohort.CohortConfig, point: dict, out: Path) -> dict:
    cdir = cohort.imported(cfg)
    train, held = cohort.train_held(cdir)
    agents = sorted({u.agent for u in train + held})
    matrix: dict[str, dict[str, dict]] = {}
    for name, spec in model_specs(cfg, point).items():
        backend = get_backend(spec)
        matrix[name] = {a: perplexity(token_logprobs(backend, [u for u in held if u.agent == a], cfg.name),
                                      seed=cfg.seed) for a in agents}
        release_backend(spec)
    wins = diagonal_wins(matrix, agents)
    result = {"point": point_id(cfg, point), "models": list(matrix), "agents": agents, "matrix": matrix,
              "diagonal_lowest": wins, "trained": [a for a in agents if a in matrix]}
    write_json(out / "perplexity.json", result)
    plot_perplexity(result, out / "perplexity.png")
    return result


def plot_perplexity(result: dict, path: Path) -> None:
    import matplotlib  # heavy: matplotlib (train extra)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models, agents = result["models"], result["agents"]
    grid = np.array([[result["matrix"][m][a]["perplexity"] for a in agents] for m in models])
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(agents), 1.2 + 0.55 * len(models)))
    im = ax.imshow(grid, cmap="viridis_r")
    ax.set_xticks(range(len(agents)), agents, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("held-out words of")
    ax.set_ylabel("model")
    for i in range(len(models)):
        for j in range(len(agents)):
            ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(im, ax=ax, label="perplexity per token (lower: more like them)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_votes(cfg: cohort.CohortConfig, point: dict, out: Path, model: str | None = None) -> dict:
    """Each agent's model, the base prompted with the agent's own words, and the plain base vote on every motion the
    agent voted on; accuracy against the record beside the agent's majority vote."""
    cdir = cohort.imported(cfg)
    motions = cohort.motions(cdir)
    if not motions:
        raise CharacterError(f"cohort={cfg.name!r}: no motions; give the recipe a motions CSV, or skip --sections votes")
    train, _ = cohort.train_held(cdir)
    agents = sorted({a for m in motions for a in m.votes})
    specs = model_specs(cfg, point)
    records: list[VoteRow] = []

    written = write_vote_questions(cfg, motions, out.parent, model)["questions"]

    def ask(backend, method: str, agent: str, system: str) -> None:
        mine = [m for m in motions if agent in m.votes]
        convs = [[Message(role="system", content=system), Message(role="user", content=vote_question(m, written))]
                 for m in mine]
        for m, p in zip(mine, p_yes(backend, convs), strict=True):
            records.append(VoteRow(method=method, agent=agent, motion=m.id, p_yes=p, vote="yes" if p > 0.5 else "no",
                                   recorded=m.votes[agent]))

    base = get_backend(cfg.base)
    for a in agents:
        ask(base, "base", a, SYSTEM)
        ask(base, "base prompted with their words", a, prompted_system(a, [u for u in train if u.agent == a]))
    for a in agents:
        if a in specs:
            backend = get_backend(specs[a])
            ask(backend, "agent model", a, SYSTEM)
            release_backend(specs[a])
    write_jsonl(out / "votes.jsonl", records)
    summary: dict[str, dict] = {}
    for a in agents:
        mine = [m for m in motions if a in m.votes]
        per = {"majority vote": accuracy([p == m.votes[a] for p, m in
                                         zip(majority_baseline(motions, a), mine, strict=True)])}
        unseen = unseen_motions(motions, train, a)
        for method in ("agent model", "base prompted with their words", "base"):
            got = [r for r in records if r.agent == a and r.method == method]
            if got:
                per[method] = {**accuracy([r.vote == r.recorded for r in got]),
                               "yes_share": sum(r.vote == "yes" for r in got) / len(got),
                               "unseen": accuracy([r.vote == r.recorded for r in got if r.motion in unseen])}
        summary[a] = per
    result = {"point": point_id(cfg, point), "motions": len(motions), "per_agent": summary}
    write_json(out / "votes.json", result)
    return result


def format_perplexity(r: dict) -> str:
    agents = r["agents"]
    lines = ["perplexity per token on each agent's held-out words (rows: models)",
             f"{'':<16}" + "".join(f"{a[:14]:>16}" for a in agents)]
    for m in r["models"]:
        lines.append(f"{m[:16]:<16}" + "".join(f"{r['matrix'][m][a]['perplexity']:>16.2f}" for a in agents))
    lines.append(f"own model lowest on own words: {len(r['diagonal_lowest'])} of {len(r['trained'])} trained agents")
    return "\n".join(lines)


def format_votes(r: dict) -> str:
    lines = [f"vote accuracy on {r['motions']} motions (95% Wilson interval)"]
    for a, per in r["per_agent"].items():
        lines.append(f"  {a}")
        for method, v in per.items():
            lines.append(f"    {method:<34} {v['accuracy']:.2f} [{v['low']:.2f}, {v['high']:.2f}]  n={v['n']}")
    return "\n".join(lines)
