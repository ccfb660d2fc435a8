"""What each agent believes, remembers and is like, read from their training words with quoted evidence, and
the probing questions written from it (reviewed by a person before they are used).

    agents/<cohort>/profiles/<agent-slug>.json    the profile: items with kind, statement, evidence, source
    agents/<cohort>/questions/<agent-slug>.jsonl  one ProbeQuestion per profile item (status pending until reviewed)

Extraction reads the agent's training utterances in chunks of about `CHUNK_WORDS` words and asks for items in a
schema (structured output). Each item's evidence must be an exact quote of the agent's training words (whitespace
and case aside) of at least `QUOTE_WORDS` words; its source is the utterance the quote comes from, found by us rather
than asked of the model. A schema-guided decoder (local models, llguidance) may only write evidence that is one
of the agent's training sentences of `QUOTE_WORDS` to `QUOTE_MAX_WORDS` words, and statements of 3-25 words ending
in a full stop: a small model cannot misquote, and rarely runs on to the token limit (a chunk that does is
counted as failed). Backends that are not guided are checked after the fact. Near-duplicate statements of the
same kind, or two items of one kind on the same quote, are merged across chunks. Every drop is counted in the
profile's `counts`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..inference import get_backend
from ..inference.structured import StructuredFailure, generate_structured_batch
from ..prompts import is_near_duplicate
from ..runs import read_record, write_jsonl, write_record
from ..types import Message, Record, SamplingParams, stable_id
from . import cohort
from .corpus import Utterance
from .train import agent_slug

Kind = Literal["belief", "memory", "personality"]
KINDS: tuple[str, ...] = ("belief", "memory", "personality")
CHUNK_WORDS = 300
QUOTE_WORDS = 5  # the shortest evidence kept ("1918 and 2020." shows nothing about anyone)
QUOTE_MAX_WORDS = 40  # the longest sentence a guided decoder may quote (four items must fit in the token limit)


class ItemDraft(BaseModel):
    kind: Kind
    statement: str = Field(description="what they believe, remember or are like, in the third person")
    evidence: str = Field(description="their exact words that show it, quoted from the text")


class ProfileDraft(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [
        {"kind": "belief", "statement": "Believes the town should not borrow to cover running costs.",
         "evidence": "I'm against spending money we don't have"}]}]})
    items: list[ItemDraft] = Field(max_length=4)


STATEMENT = r"[A-Z][A-Za-z',-]{0,19}( [A-Za-z0-9',$%-]{1,20}){2,24}\."  # 3-25 words and a full stop


class QuestionDraft(BaseModel):
    patterns: ClassVar[dict[str, str]] = {"question": r"[A-Z][A-Za-z',-]{0,19}( [A-Za-z0-9',$%-]{1,20}){2,30}\?"}
    question: str = Field(description="one question to ask them, which their answer would show")


class ProfileItem(Record):
    id: str
    agent: str
    kind: Kind
    statement: str
    evidence: str
    source: str


class ProfileCounts(Record):
    """What happened to the model's proposals: each proposed item is kept, unsupported (no exact quote of the
    agent's training words) or a duplicate; a failed chunk gave no parseable draft."""

    chunks: int = 0
    failed_chunks: int = 0
    proposed: int = 0
    unsupported: int = 0
    duplicate: int = 0
    kept: int = 0


class Profile(Record):
    agent: str
    items: list[ProfileItem]
    counts: ProfileCounts = Field(default_factory=ProfileCounts)


class ProbeQuestion(Record):
    id: str
    agent: str
    kind: Kind
    item: str = Field(description="The profile item's statement (or a reviewer's own, for one added by hand).")
    evidence: str = ""
    source: str = ""
    question: str
    status: Literal["pending", "accepted", "edited", "deleted"] = "pending"
    origin: Literal["generated", "added"] = "generated"


def chunks(rows: list[Utterance], words: int = CHUNK_WORDS) -> list[list[Utterance]]:
    out: list[list[Utterance]] = [[]]
    size = 0
    for u in rows:
        n = len(u.text.split())
        if out[-1] and size + n > words:
            out.append([])
            size = 0
        out[-1].append(u)
        size += n
    return [c for c in out if c]


def extraction_prompt(agent: str, chunk: list[Utterance]) -> list[Message]:
    lines = "\n".join(u.text for u in chunk)
    return [Message(role="system", content="You read what a person said and note what it shows about them."),
            Message(role="user", content=f"Here is what {agent} said:\n{lines}\n\nList up to four things this "
                    f"shows: what {agent} believes (kind belief), remembers (kind memory) or is like (kind "
                    "personality). For each, quote the exact sentence that shows it.")]


def sentences(rows: list[Utterance]) -> list[str]:
    """The sentences of `rows` of QUOTE_WORDS to QUOTE_MAX_WORDS words (as `source_of` counts them), each once: what
    a guided decoder may quote."""
    out = [s.strip() for u in rows for s in re.split(r"(?<=[.!?])\s+", u.text)]
    return list(dict.fromkeys(s for s in out if QUOTE_WORDS <= len(_plain(s).split()) <= QUOTE_MAX_WORDS))


def guided_schema(rows: list[Utterance]) -> dict:
    """ProfileDraft's JSON schema narrowed for a guided decoder: evidence one of `rows`' sentences, statements in
    the STATEMENT form."""
    js = ProfileDraft.model_json_schema()
    props = js["$defs"]["ItemDraft"]["properties"]
    props["evidence"]["enum"] = sentences(rows)
    props["statement"]["pattern"] = f"^(?:{STATEMENT})$"
    return js


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", text).lower().strip(" \"'.,;:!?")  # spacing, case and the quote's ends aside


def source_of(item: ItemDraft, rows: list[Utterance]) -> str | None:
    """The id of the first of `rows` whose text holds the item's evidence (QUOTE_WORDS words or more), or None."""
    quote = _plain(item.evidence)
    if len(quote.split()) < QUOTE_WORDS:
        return None
    return next((u.id for u in rows if quote in _plain(u.text)), None)


def build_profile(agent: str, rows: list[Utterance], backend, seed: int = 0, max_tokens: int = 400) -> Profile:
    """The profile from `rows` (the agent's training utterances): one structured call per chunk, each item's
    evidence found in `rows`, near-duplicates of the same kind merged. A guided backend with no sentence it could
    quote is not asked (its schema could not be met): the profile is empty, with the chunks counted as failed."""
    parts = chunks(rows)
    guided = getattr(backend, "supports_json_schema", False)
    got: list[ProfileDraft | StructuredFailure]
    if guided and not sentences(rows):
        got = [StructuredFailure(error="no sentence to quote", raw="", attempts=0)] * len(parts)
    else:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.7, seed=seed)
        got = generate_structured_batch(backend, [extraction_prompt(agent, c) for c in parts], ProfileDraft, params,
                                        json_schema=guided_schema(rows) if guided else None)
    counts = ProfileCounts(chunks=len(parts))
    items: list[ProfileItem] = []
    for draft in got:
        if isinstance(draft, StructuredFailure):
            counts.failed_chunks += 1
            continue
        for d in draft.items:
            counts.proposed += 1
            source = source_of(d, rows)
            if source is None:
                counts.unsupported += 1
            elif any(i.kind == d.kind and _plain(i.evidence) == _plain(d.evidence) for i in items) or \
                    is_near_duplicate(d.statement, [i.statement for i in items if i.kind == d.kind]):
                counts.duplicate += 1
            else:
                items.append(ProfileItem(id=stable_id(agent, d.kind, d.statement), agent=agent, kind=d.kind,
                                         statement=d.statement.strip(), evidence=d.evidence.strip(), source=source))
    counts.kept = len(items)
    return Profile(agent=agent, items=items, counts=counts)


def question_prompt(agent: str, item: ProfileItem) -> list[Message]:
    return [Message(role="system", content="You write interview questions."),
            Message(role="user", content=f"What we know about {agent} ({item.kind}): {item.statement}\n"
                    f"Write one question to ask {agent} whose answer would show this, without "
                    "giving the answer away.")]


def write_questions(agent: str, profile: Profile, backend, seed: int = 0) -> list[ProbeQuestion]:
    params = SamplingParams(max_tokens=80, temperature=0.7, seed=seed)
    got = generate_structured_batch(backend, [question_prompt(agent, i) for i in profile.items], QuestionDraft, params)
    return [ProbeQuestion(id=stable_id(i.id, "question"), agent=agent, kind=i.kind, item=i.statement,
                          evidence=i.evidence, source=i.source, question=q.question.strip())
            for i, q in zip(profile.items, got, strict=True) if not isinstance(q, StructuredFailure)]


def profile_path(cdir: Path, agent: str) -> Path:
    return cdir / "profiles" / f"{agent_slug(agent)}.json"


def questions_path(cdir: Path, agent: str) -> Path:
    return cdir / "questions" / f"{agent_slug(agent)}.jsonl"


def run_profiles(cfg: cohort.CohortConfig, model: str | None = None, say=print) -> dict[str, Profile]:
    """Profiles and questions for every agent (an agent whose profile exists is kept: delete the file to redo it;
    questions already written, and perhaps reviewed, are never overwritten)."""
    cdir = cohort.imported(cfg)
    train, _ = cohort.train_held(cdir)
    agents = cohort.agent_names(cfg)
    backend = get_backend(model or cfg.base)
    out = {}
    for a in agents:
        p = profile_path(cdir, a)
        if (saved := read_record(p, Profile)) is not None:
            out[a] = saved
        else:
            out[a] = build_profile(a, [u for u in train if u.agent == a], backend, seed=cfg.seed)
            write_record(p, out[a])
        q = questions_path(cdir, a)
        if not q.exists():
            write_jsonl(q, write_questions(a, out[a], backend, seed=cfg.seed))
        c = out[a].counts
        say(f"[profiles] {a}: {c.kept} items kept of {c.proposed} proposed ({c.unsupported} without a "
            f"matching quote, {c.duplicate} duplicates, {c.failed_chunks} of {c.chunks} chunks failed)")
    return out
