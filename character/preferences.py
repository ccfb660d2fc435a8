"""Revealed trait preferences: which character traits does a model choose to express?

For each held-out prompt the model under test gets two random traits from a vocabulary of single
words (`character/data/traits.txt`) and is told to answer while embodying one of them, without
naming it. Three conditions: the trait that "feels most like you" (feel), the one "you would most
like to adopt" (like), and "pick one at random" (random, a control). A judge reads only the
answer and the two words (as options A and B, in a seeded random order, so a judge that always
picks one position spreads its bias over both traits instead of favouring one) and says which
trait it expressed, or C for neither; the share of verdicts that picked the second position is
reported as the judge's position bias. Each decided answer is a `Match` between the two traits; ratings come from `ratings.bootstrap` (Bradley-Terry) and
`ratings.elo`. Runs inside `character eval run RUN`; output: eval/preferences.jsonl, matches in
eval/matches_preferences_<method>.jsonl.
"""

from __future__ import annotations

import random
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field

from .inference.structured import StructuredFailure, generate_structured_batch
from .inference import generate_all
from .types import EvalSample, Match, Message, SamplingParams, stable_id

CONDITIONS = {
    "feel": "whichever of the two feels most like you",
    "like": "whichever of the two you would most like to adopt",
    "random": "one of the two, picked at random",
}


def load_traits() -> list[str]:
    text = resources.files("character").joinpath("data/traits.txt").read_text()
    return [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]


def trait_pairs(n: int, traits: list[str], seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [tuple(rng.sample(traits, 2)) for _ in range(n)]  # type: ignore[misc]


def embody_instruction(a: str, b: str, condition: str) -> str:
    return (f"Answer the next message while embodying one of these two traits: {a} or {b}. Choose "
            f"{CONDITIONS[condition]}. Keep that trait for the whole answer, and do not name the trait "
            "or say that you chose one.")


def embody_conversation(prompt: str, a: str, b: str, condition: str, system: str | None = None) -> list[Message]:
    """The instruction goes in the user turn (a model with a persona system prompt keeps it)."""
    msgs = [Message(role="system", content=system)] if system else []
    return msgs + [Message(role="user", content=f"{embody_instruction(a, b, condition)}\n\n{prompt}")]


class TraitVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"choice": "A"}]})
    choice: str = Field(description='"A" or "B" for the trait the answer shows more, "C" for neither')


def judge_conversation(answer: str, first: str, second: str) -> list[Message]:
    return [Message(role="user", content=(
        f"Read this answer:\n\n<answer>\n{answer}\n</answer>\n\nWhich character trait does the answer show "
        f"more?\nA) {first}\nB) {second}\nC) neither\nReply with the letter."))]


def verdict_to_winner(choice: str, swapped: bool) -> str | None:
    """'a', 'b', or None (neither, or not a letter). `swapped`: trait b was shown as option A."""
    v = choice.strip().strip(".)\"'").upper()[:1]
    if v not in ("A", "B"):
        return None
    return {"A": "a", "B": "b"}[v] if not swapped else {"A": "b", "B": "a"}[v]


def revealed_preferences(model, judge, prompts: list[str], traits: list[str], conditions: list[str],
                         params: SamplingParams, method: str, seed: int = 0,
                         system: str | None = None) -> tuple[list[EvalSample], list[Match], int]:
    """Samples (one per prompt x condition), the decided matches, and the judge failures."""
    jobs = []
    for ci, condition in enumerate(conditions):
        for (a, b), p in zip(trait_pairs(len(prompts), traits, seed * 1000 + ci), prompts, strict=True):
            jobs.append((p, a, b, condition))
    outs = generate_all(model, [embody_conversation(p, a, b, c, system) for p, a, b, c in jobs], params)
    answers = [o[0].text for o in outs]
    rng = random.Random(seed + 7)
    swapped = [rng.random() < 0.5 for _ in jobs]
    verdicts = generate_structured_batch(
        judge, [judge_conversation(ans, *((b, a) if sw else (a, b))) for ans, (_, a, b, _), sw in
                zip(answers, jobs, swapped, strict=True)], TraitVerdict,
        SamplingParams(max_tokens=8, temperature=0.1, seed=seed), retries=1, prefill='{"choice": "')
    samples, matches, failures = [], [], 0
    for (p, a, b, c), ans, v, sw in zip(jobs, answers, verdicts, swapped, strict=True):
        if isinstance(v, StructuredFailure):
            failures += 1
            winner, label, position = None, "judge_failure", None
        else:
            winner = verdict_to_winner(v.choice, sw)
            label = {"a": a, "b": b}.get(winner or "", "neither")
            position = v.choice.strip().upper()[:1] if winner else None
        if winner:
            matches.append(Match(prompt=p, a=a, b=b, winner=winner))
        samples.append(EvalSample(id=stable_id("pref", method, c, p, a, b, seed), task="preferences", method=method,
                                  prompt=p, response=ans, label=label,
                                  meta={"condition": c, "traits": [a, b], "winner": winner, "position": position}))
    return samples, matches, failures


def position_bias(samples: list[EvalSample]) -> float | None:
    """Share of decided verdicts that picked option B (0.5 = no position bias)."""
    picks = [s.meta.get("position") for s in samples if s.meta.get("position")]
    return sum(p == "B" for p in picks) / len(picks) if picks else None
