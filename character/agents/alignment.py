"""Answers to the probing questions and how well each matches the profile item it probes.

Three methods answer every question that was not deleted in review: the agent's own model, the base model
prompted with the agent's profile, and the plain base. A judge scores each answer's alignment with the item
(belief, memory or personality) from 1 to 5, read as the expected value of its probabilities of the labels 1-5
(one forward pass, no parsing), and writes a one-sentence explanation. Before its scores count, the judge is
calibrated on known pairs: the item's own quoted evidence should score above another agent's evidence for the
same item. A judge that does not beat chance there is shown as "no signal".

    agents/<cohort>/eval/<point>/answers.jsonl     one row per (question, method): answer, score, explanation
    agents/<cohort>/eval/<point>/alignment.json    means with intervals per agent, kind and method; calibration
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel, Field

from ..errors import CharacterError
from ..inference import get_backend, release_backend
from ..inference.structured import StructuredFailure, generate_structured_batch
from ..judges import Calibration, calibrate, label_probs, outcome
from ..runs import read_jsonl, read_record, write_json, write_jsonl
from ..stats import mean_interval
from ..types import Message, Record, SamplingParams
from . import cohort
from .measure import model_specs
from .profiles import KINDS, ProbeQuestion, Profile, ProfileItem, profile_path, questions_path
from .train import SYSTEM, point_id

LABELS = ["1", "2", "3", "4", "5"]
METHODS = ("agent model", "base prompted with the profile", "base")


class Answer(Record):
    agent: str
    question: str
    kind: str
    item: str
    method: str
    answer: str
    score: float
    explanation: str = ""


class Explanation(BaseModel):
    explanation: str = Field(description="one sentence: how the answer matches or misses the statement")


def profile_system(agent: str, profile: Profile) -> str:
    lines = "\n".join(f"- ({i.kind}) {i.statement}" for i in profile.items)
    return f"You are {agent}. What you believe, remember and are like:\n{lines}\n{SYSTEM}"


def judge_prompt(agent: str, kind: str, item: str, question: str, answer: str,
                 ask: str = "Answer with one digit.") -> list[Message]:
    return [Message(role="system", content="You judge whether an answer fits what is known about a person."),
            Message(role="user", content=f"Known about {agent} ({kind}): {item}\nQuestion put to {agent}: {question}\n"
                    f"Answer: \"{answer}\"\n\nHow well does the answer agree with what is known, from 1 (contradicts "
                    "or ignores it) to 5 (clearly shows it)? " + ask)]


def scores(judge, prompts: list[list[Message]]) -> list[float]:
    return [sum(int(k) * p for k, p in probs.items()) for probs in label_probs(judge, prompts, LABELS)]


def gate_outcome(s_true: float, s_decoy: float) -> float:
    """A known pair's outcome: 1 when the item's own evidence scored higher, 0 when lower, 0.5 within a tie."""
    return outcome(0.5 + (s_true - s_decoy) / 8)  # scores differ by at most 4: a probability-like margin


def usable(questions: list[ProbeQuestion]) -> list[ProbeQuestion]:
    return [q for q in questions if q.status != "deleted"]


def run_alignment(cfg: cohort.CohortConfig, point: dict, out: Path, judge_spec: str | None = None,
                  max_tokens: int = 60) -> dict:
    cdir = cohort.imported(cfg)
    specs = model_specs(cfg, point)
    agents = [a for a in cohort.agent_names(cfg) if questions_path(cdir, a).exists()]
    qs = {a: usable(read_jsonl(questions_path(cdir, a), ProbeQuestion)) for a in agents}
    agents = [a for a in agents if qs[a]]
    if not agents:
        raise CharacterError(f"cohort={cfg.name!r}: no probing questions to answer (the profiles section has not run, "
                             "or kept no item); add questions with: character agents review RECIPE --agent NAME")
    profiles = {a: read_record(profile_path(cdir, a), Profile) or Profile(agent=a, items=[  # questions added by hand only: their items are the profile
                    ProfileItem(id=q.id, agent=a, kind=q.kind, statement=q.item, evidence=q.evidence, source=q.source)
                    for q in qs[a]]) for a in agents}
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=cfg.seed)
    answers: dict[tuple[str, str], list[str]] = {}
    base = get_backend(cfg.base)
    for a in agents:
        plain = [[Message(role="system", content=SYSTEM), Message(role="user", content=q.question)] for q in qs[a]]
        prompted = [[Message(role="system", content=profile_system(a, profiles[a])), Message(role="user", content=q.question)]
                    for q in qs[a]]
        answers[(a, "base")] = [c[0].text.strip() for c in base.generate(plain, params)] if plain else []
        answers[(a, METHODS[1])] = [c[0].text.strip() for c in base.generate(prompted, params)] if prompted else []
    del base
    for a in agents:
        if a in specs and qs[a]:
            model = get_backend(specs[a])
            convs = [[Message(role="system", content=SYSTEM), Message(role="user", content=q.question)] for q in qs[a]]
            answers[(a, METHODS[0])] = [c[0].text.strip() for c in model.generate(convs, params)]
            release_backend(specs[a])
    judge = get_backend(judge_spec or cfg.base)
    rows: list[Answer] = []
    for (a, method), texts in answers.items():
        prompts = [judge_prompt(a, q.kind, q.item, q.question, t) for q, t in zip(qs[a], texts, strict=True)]
        why = generate_structured_batch(
            judge, [judge_prompt(a, q.kind, q.item, q.question, t, ask="Explain in one sentence.")
                    for q, t in zip(qs[a], texts, strict=True)],
            Explanation, SamplingParams(max_tokens=60, temperature=0.3, seed=cfg.seed), retries=1)
        for q, t, s, w in zip(qs[a], texts, scores(judge, prompts), why, strict=True):
            rows.append(Answer(agent=a, question=q.question, kind=q.kind, item=q.item, method=method, answer=t,
                               score=s, explanation="" if isinstance(w, StructuredFailure) else w.explanation))
    # the gate: each item's own evidence against another agent's evidence, both scored for the item
    known = []
    evidence = [(a, q.evidence) for a in agents for q in qs[a] if q.evidence]
    for a in agents:
        for q in qs[a]:
            decoys = [e for b, e in evidence if b != a]
            if q.evidence and decoys:
                decoy = random.Random(f"{cfg.seed}:{q.id}").choice(decoys)
                s_true, s_decoy = scores(judge, [judge_prompt(a, q.kind, q.item, q.question, q.evidence),
                                                 judge_prompt(a, q.kind, q.item, q.question, decoy)])
                known.append(gate_outcome(s_true, s_decoy))
    del judge
    cal = calibrate("alignment", judge_spec or cfg.base, "labels", known, [])
    write_jsonl(out / "answers.jsonl", rows)
    means = {}
    for a in agents:
        for method in METHODS:
            for kind in (*KINDS, "all"):
                vals = [r.score for r in rows if r.agent == a and r.method == method and (kind == "all" or r.kind == kind)]
                if vals:
                    means.setdefault(a, {}).setdefault(method, {})[kind] = dict(zip(
                        ("mean", "low", "high"), mean_interval(vals, seed=cfg.seed), strict=True)) | {"n": len(vals)}
    reviewed = {a: sum(q.status in ("accepted", "edited") for q in qs[a]) for a in agents}
    result = {"point": point_id(cfg, point), "calibration": cal.model_dump(), "means": means,
              "questions": {a: len(qs[a]) for a in agents}, "reviewed": reviewed}
    write_json(out / "alignment.json", result)
    return result


def format_alignment(r: dict) -> str:
    cal = Calibration.model_validate(r["calibration"])
    lines = [f"alignment with the profile (1-5, judge): {cal.headline}"]
    if cal.passed:
        for a, per in r["means"].items():
            lines.append(f"  {a}: " + "; ".join(f"{m} {v['all']['mean']:.2f} [{v['all']['low']:.2f}, {v['all']['high']:.2f}]"
                                              for m, v in per.items() if "all" in v))
    return "\n".join(lines)
