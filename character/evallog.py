"""The evaluation log: one typed record of `character eval RUN`, written as `eval/log.json`.

Every section's result is validated against its model here when it is saved, and every reader (the
terminal summary, `character report`, the studio) loads the log through `load` instead of reading loose
JSON. `summary.json` is the same content, kept for scripts that read it. Per-sample records stay in the
section files named in `samples` (JSONL of `EvalSample` / `Match`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, computed_field

from .judges import Calibration
from .runs import read_json


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Finetuned(_M):
    accuracy: float
    low: float
    high: float
    macro_f1: float
    confusion: list[list[int]]
    seconds: float
    model: str


class ClassifierResult(_M):
    heldout_rows: int
    train_rows: int | None = None
    accuracy: float
    low: float | None = None  # Wilson 95% interval
    high: float | None = None
    macro_f1: float
    labels: list[str] = ["in", "out"]
    confusion: list[list[int]]
    model: str = ""
    finetuned: Finetuned | None = None


class Perplexity(_M):
    perplexity: float
    tokens: int
    turns: int


class LikelihoodResult(_M):
    gain_per_token: float
    low: float
    high: float
    n: int
    perplexity: dict[str, dict[str, Perplexity]]  # answers (in_character, plain) -> model (base, trained)


class Share(_M):
    in_character: float
    low: float
    high: float
    n: int
    # persona score (persona.py) of the same answers under the base model, mean nats/token with its interval;
    # None in logs written before it was measured, or where the base model reads no log-probabilities
    persona: float | None = None
    persona_low: float | None = None
    persona_high: float | None = None


class TraitRating(_M):
    rating: float
    low: float | None
    high: float | None
    elo: float | None
    matches: int


class Movers(_M):
    up: list[tuple[str, float]]
    down: list[tuple[str, float]]
    eligible: int | None = None
    rated: int | None = None
    min_matches: int = 1


class ConstitutionTraits(_M):
    words: list[str]
    rated: dict[str, float]
    mean_delta: float | None


class PreferencesResult(_M):
    judge: str = "?"
    calibration: Calibration | None = None
    path: str | None = None
    answers: dict[str, int] = {}
    matches: dict[str, int]
    judge_failures: dict[str, int]
    neither: dict[str, int]
    judge_position_bias: float | None
    ratings: dict[str, dict[str, TraitRating]]  # model -> trait -> rating
    movers: Movers
    constitution_traits: ConstitutionTraits


class WinRate(_M):
    opponent: str
    criterion: str | None = None
    judge: str | None = None
    path: str | None = None
    win_rate: float
    low: float
    high: float
    judged: int
    wins: int
    losses: int
    ties: int
    failures: int
    first_slot: float | None = None


class MeanScore(_M):
    mean: float | None
    n: int
    failures: int


class RubricResult(_M):
    per_trait: dict[str, MeanScore]
    mean: float | None
    failures: int


class EvaluatorsResult(_M):
    per_evaluator: dict[str, MeanScore]
    per_conversation: dict[str, float]
    failures: int


class JudgesResult(_M):
    judge: str
    calibration: dict[str, Calibration] = {}
    coherence: WinRate
    pairwise: WinRate
    rubric: dict[str, RubricResult]
    evaluators: dict[str, EvaluatorsResult]


class Interval(_M):
    accuracy: float
    low: float
    high: float


class Difference(_M):
    difference: float
    low: float
    high: float


class RetentionResult(_M):
    skipped: str | None = None
    prompts: int = 0
    checker: str = ""
    methods: dict[str, dict[str, Interval]] = {}  # method -> strict/loose
    trained_minus_base_strict: Difference | None = None
    trained_minus_base_loose: Difference | None = None


CLASSIFIER_MIN_ACCURACY = 0.8  # below this held-out accuracy, the classifier's robustness calls are rough

SECTION_MODELS: dict[str, type[_M]] = {
    "classifier": ClassifierResult, "likelihood": LikelihoodResult, "preferences": PreferencesResult,
    "judges": JudgesResult, "retention": RetentionResult}
SAMPLE_FILES = {"robustness": "robustness.jsonl", "preferences": "preferences.jsonl", "judges": "judges.jsonl",
                "retention": "retention.jsonl"}


class EvalLog(_M):
    run: str = ""
    judge: str = ""
    base: str = ""
    config_hash: str = ""
    settings: dict = Field(default_factory=dict, description="The eval: section used (sizes, judges, seed).")
    models: dict[str, str] = Field(default_factory=dict, description="Role -> model spec or trained model id.")
    seconds: dict[str, float | None] = {}
    classifier: ClassifierResult | None = None
    likelihood: LikelihoodResult | None = None
    robustness: dict[str, Share] | None = None  # "method|attack" -> share called in character
    preferences: PreferencesResult | None = None
    judges: JudgesResult | None = None
    retention: RetentionResult | None = None
    samples: dict[str, str] = Field(default_factory=dict, description="Section -> its per-sample JSONL file.")

    @computed_field
    @property
    def validity(self) -> dict[str, str]:
        """One line per judged or classifier-based number: may it be read as a result, and why."""
        out: dict[str, str] = {}
        if self.robustness is not None and self.classifier is not None:
            ok = self.classifier.accuracy >= CLASSIFIER_MIN_ACCURACY
            out["robustness"] = (f"classifier held-out accuracy {'at least' if ok else 'below'} "
                                 f"{CLASSIFIER_MIN_ACCURACY}{'' if ok else ': rough'}")
        if self.preferences is not None:
            cal = self.preferences.calibration
            out["preferences"] = cal.headline if cal else "not calibrated"
        if self.judges is not None:
            for name, cal in self.judges.calibration.items():
                out[f"judges.{name}"] = cal.headline
        return out


def validate_section(name: str, result) -> object:
    """A section's result as saved: checked against its model (robustness: a table of shares)."""
    if name == "robustness":
        return {k: Share.model_validate(v).model_dump() for k, v in result.items()}
    return SECTION_MODELS[name].model_validate(result).model_dump()


def as_dict(log: EvalLog) -> dict:
    """The log as the readers take it: sections that were not run are left out."""
    return {k: v for k, v in log.model_dump().items() if v is not None}


def load(stage: Path) -> EvalLog | None:
    """The run's evaluation log (eval/log.json; summary.json for evaluations saved before the log existed)."""
    for name in ("log.json", "summary.json"):
        if (stage / name).exists():
            return EvalLog.model_validate({k: v for k, v in read_json(stage / name).items()
                                           if k in EvalLog.model_fields})
    return None
