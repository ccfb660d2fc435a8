"""How a judge's verdict is read, debiased and checked before anyone sees a judged number.

Two paths, chosen by what the judge model can do:
- **labels** (a judge that scores tokens: embedded, `hf/`, `vllm/`, `tinker/`, and `openai/` servers
  that return `top_logprobs` when the model's `label_logprobs` option is set): the verdict is the
  judge's probability of each option label ("A"/"B"/"C", or "1".."5") as the first token of its
  answer, renormalised over the labels. Pairwise and A/B/C verdicts are asked in both orders and the
  two orders averaged, so a judge that always prefers the first slot scores exactly 0.5. A rubric
  score is the expected value over "1".."5". Nothing on this path can fail to parse.
- **text** (other chat APIs): structured JSON, asked in both orders; a win counts only when both
  orders agree (a tie otherwise), and an answer that does not parse after a re-ask is a counted
  failure.

Calibration: before judging, each criterion is run on known pairs built from the run's own data
(for example the distillation teacher's answer against the student's). The judge's accuracy comes
with a Wilson 95% interval; when its lower bound does not clear chance (0.5), every number from that
criterion is shown as "no signal" (see `Calibration.headline`).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel

from .inference.structured import StructuredFailure, generate_structured_batch
from .stats import wilson
from .types import Conversation, SamplingParams

Path_ = Literal["labels", "text"]
TIE = 1e-6  # |p - 0.5| below this is a tie


def reads_labels(judge) -> bool:
    """Can this judge score the option labels directly? A backend may say so itself (an OpenAI-compatible
    server does when its `label_logprobs` option is set); otherwise any backend that scores tokens can."""
    declared = getattr(judge, "reads_labels", None)
    if declared is not None:
        return bool(declared)
    return callable(getattr(judge, "next_token_logprobs", None)) or bool(getattr(judge, "supports_logprobs", False))


def label_probs(judge, conversations: list[Conversation], labels: list[str]) -> list[dict[str, float]]:
    """For each conversation, the judge's probability of each label as the first token of its answer,
    renormalised over `labels`."""
    if not conversations:
        return []
    if callable(getattr(judge, "next_token_logprobs", None)):
        lps = judge.next_token_logprobs(conversations, labels)
    else:  # any backend that scores given responses: the first token of each label as the whole answer
        per_label = [[r[0] for r in judge.logprobs(conversations, [label] * len(conversations))] for label in labels]
        lps = [list(col) for col in zip(*per_label, strict=True)]
    out = []
    for row in lps:
        top = max(row)
        ws = [math.exp(v - top) for v in row]
        z = sum(ws)
        out.append({label: w / z for label, w in zip(labels, ws, strict=True)})
    return out


# ---- text-path verdicts -------------------------------------------------------------------------

def text_letters(judge, conversations: list[Conversation], schema, field: str, seed: int,
                 max_tokens: int = 64) -> list[str | None]:
    """Structured verdicts on the text path: the chosen field, upper-cased, or None (a failure)."""
    outs = generate_structured_batch(judge, conversations, schema,
                                     SamplingParams(max_tokens=max_tokens, temperature=0.1, seed=seed),
                                     retries=1, prefill=f'{{"{field}": "')
    letters = []
    for o in outs:
        if isinstance(o, StructuredFailure):
            letters.append(None)
            continue
        v = str(getattr(o, field)).strip().strip(".)\"'").upper()[:1]
        letters.append(v or None)
    return letters


# ---- calibration --------------------------------------------------------------------------------

class Calibration(BaseModel):
    """A judge criterion's record on known pairs: accuracy with a Wilson 95% interval, its position
    bias, and whether its numbers may be shown as results."""

    criterion: str
    judge: str
    path: Path_
    n: int
    accuracy: float | None = None
    low: float | None = None
    high: float | None = None
    first_slot: float | None = None  # mean share of the verdict on the first-shown option (0.5 = no position bias)
    failures: int = 0
    passed: bool = False
    note: str = ""

    @property
    def headline(self) -> str:
        if self.accuracy is None:
            return f"not calibrated ({self.note or 'no known pairs'}); judge {self.judge}"
        acc = f"accuracy {self.accuracy:.2f} [{self.low:.2f}, {self.high:.2f}] on {self.n} known pairs"
        if not self.passed:
            return f"no signal (judge failed calibration: {acc})"
        return f"calibrated: {acc}, judge {self.judge}"


def calibrate(criterion: str, judge_name: str, path: str, outcomes: list[float], first_slot: list[float],
              failures: int = 0, note: str = "") -> Calibration:
    """outcomes: 1 when the judge preferred the known-better side, 0.5 for a tie (or a failure), 0 otherwise.
    Passed when the Wilson interval's lower bound is above chance (0.5)."""
    n = len(outcomes)
    if n == 0:
        return Calibration(criterion=criterion, judge=judge_name, path=path, n=0, note=note or "no known pairs")
    correct = sum(outcomes)
    low, high = wilson(correct, n)
    return Calibration(criterion=criterion, judge=judge_name, path=path, n=n, accuracy=correct / n,
                       low=low, high=high,
                       first_slot=sum(first_slot) / len(first_slot) if first_slot else None,
                       failures=failures, passed=low > 0.5, note=note)


def outcome(p_good: float | None) -> float:
    """A debiased probability that the known-better side won -> 1, 0.5 (tie or failure) or 0."""
    if p_good is None or abs(p_good - 0.5) < TIE:
        return 0.5
    return 1.0 if p_good > 0.5 else 0.0


def calibration_of(section: dict, criterion: str | None = None) -> Calibration:
    """The saved calibration of a section (or of one criterion in it); an evaluation saved before
    calibration existed reads as not calibrated, and so is not shown as a result."""
    cal = section.get("calibration") or {}
    if criterion is not None:
        cal = cal.get(criterion) or {}
    if not cal:
        return Calibration(criterion=criterion or "?", judge=str(section.get("judge", "?")), path="text", n=0,
                           note="saved before judge calibration existed; run `character eval run RUN --fresh`")
    return Calibration.model_validate(cal)


def judged(cal: Calibration, value: str) -> str:
    """A judged number as shown: the value when its criterion passed calibration, else why not."""
    return value if cal.passed else cal.headline
