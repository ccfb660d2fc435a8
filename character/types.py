"""Pydantic records shared by every stage. Each artifact on disk is JSONL of one of these types.

Records forbid unknown fields, so a file written by another tool (or an older version with a
renamed field) fails loudly at load time instead of being half-read.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(Record):
    role: Role
    content: str


Conversation = list[Message]


def stable_id(*parts: object) -> str:
    """A short, stable content hash; used as record id so resume and dedupe are exact."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class SamplingParams(Record):
    max_tokens: int = Field(256, ge=1, description="Most new tokens per completion.")
    temperature: float = Field(0.7, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a completion.")
    seed: int | None = Field(None, description="Seed for reproducible sampling where supported.")
    n: int = Field(1, ge=1, description="Completions per conversation.")
    repetition_penalty: float = Field(1.0, gt=0.0, description="Above 1 discourages repeats (local and vLLM backends).")


class Completion(Record):
    text: str
    finish_reason: Literal["stop", "length", "error"] = "stop"
    model: str = ""
    completion_tokens: int = 0
    error: str | None = Field(None, description="Why the request failed (finish_reason 'error'); a rerun retries it.")


class Prompt(Record):
    id: str
    text: str
    source: Literal["constitution", "expanded", "templates", "generic"]
    trait: str | None = None


class FilteredItem(Record):
    """A prompt a stage dropped, and why (so resume does not redo it and counts stay exact)."""

    id: str
    reason: str


class PreferencePair(Record):
    id: str
    prompt: str
    chosen: str
    rejected: str
    trait: str | None = None
    source: str = "constitution"
    constitution: str
    teacher_model: str
    student_model: str
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    heldout: bool | None = Field(None, description="Kept out of training for evaluation; decided once, when the "
                                 "pair was made (None: a file from before the split was recorded).")
    persona_chosen: float | None = Field(None, description="Persona score of the chosen answer (persona.py); None "
                                         "where the student model reads no log-probabilities.")
    persona_rejected: float | None = Field(None, description="Persona score of the rejected answer.")
    candidate_scores: list[float] | None = Field(None, description="Persona scores of the teacher's best_of "
                                                 "candidates; the chosen answer is the highest.")


class SFTExample(Record):
    id: str
    messages: list[Message]
    kind: str = "reflection"  # reflection | interaction | conversation
    constitution: str
    model: str = ""


class IntrospectionExample(Record):
    """The seeds' "think in character" format: reflect, then answer."""

    id: str
    prompt: str
    reflection: str
    answer: str
    teacher_model: str
    constitution: str


class Checkpoint(Record):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")  # a metric no step logged is NaN

    kind: Literal["dpo", "sft", "merged"]
    path: str
    base_model: str
    constitution: str
    data_counts: dict[str, int] = Field(default_factory=dict)
    hyperparameters: dict[str, object] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    created: float = Field(default_factory=time.time)


class EvalSample(Record):
    id: str
    task: str
    method: str
    prompt: str
    response: str
    score: float | None = None
    label: str | None = None
    meta: dict[str, object] = Field(default_factory=dict)


class Match(Record):
    """One head-to-head comparison for Elo / Bradley-Terry ratings (the seeds' Match)."""

    prompt: str = ""
    a: str
    b: str
    winner: Literal["a", "b", "tie"]
    score: float | None = None  # a's soft outcome in [0, 1] (a debiased judge's probability); None: from winner

    @property
    def outcome(self) -> float:
        """a's result: the soft score when there is one, else 1 win, 0 loss, 0.5 tie."""
        return self.score if self.score is not None else {"a": 1.0, "b": 0.0, "tie": 0.5}[self.winner]


class StageStatus(Record):
    version: int = 1
    stage: str
    state: Literal["pending", "running", "done", "failed", "stopped"] = "pending"
    done: int = 0
    failed: int = 0
    total: int | None = None
    filtered: dict[str, int] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    config_hash: str = ""
    settings: dict[str, object] = Field(default_factory=dict, description="What config_hash was computed from.")
    inputs: dict[str, str] = Field(default_factory=dict, description="Upstream stage -> the output id it consumed.")
    output: str = Field("", description="Id of what this stage made; set when it ends `done`.")
    writer: int | None = Field(None, description="Pid of the process that ran it (for 'interrupted').")
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    warning: str | None = None
