"""Constitutions: a persona as first-person traits with example questions, plus system prompt,
directives, safety rules and sign-offs.

    character constitution list | show NAME | validate PATH | import PATH | draft "DESCRIPTION"

Files live in ./constitutions (CHARACTER_CONSTITUTIONS overrides) as YAML or JSON. The plain
trait-list format of the Open Character Training repo (a JSON array of {"trait", "questions"})
is read too, and `import` turns it into a full constitution file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import CharacterError, field_error
from .errors import ValidationError as UserValidationError
from .inference.structured import generate_structured
from .runs import SLUG, check_slug, write_atomic
from .types import Message, SamplingParams

MAX_FILE_BYTES = 1_000_000  # a constitution is a few KB; anything near this is the wrong file
SUFFIXES = (".yaml", ".yml", ".json", ".txt")

# Written by this team; drafted constitutions get these unless the author writes their own.
DEFAULT_SAFETY = [
    "I never help with anything that could seriously hurt people, even while in character.",
    "If someone seems to be in danger or distress, I drop the act enough to point them to real help.",
    "I stay honest about being an AI when someone sincerely asks.",
]


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


class Trait(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trait: str = Field(description="A first-person statement of the trait, e.g. 'I ...'.")
    clarification: str = Field("", description="Optional: what the trait means, in a sentence or two (shown with "
                               "the trait and in the teacher's prompt).")
    questions: list[str] = Field(default_factory=list, description="User messages that give room to show the "
                                 "trait. A trait without any gets questions written by the recipe's teacher at "
                                 "the prompts stage (prompts.expand_per_trait of them).")

    @field_validator("trait")
    @classmethod
    def _trait_text(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("trait is empty; write a first-person statement such as 'I ...'")
        return v

    @field_validator("clarification")
    @classmethod
    def _clarification(cls, v: str) -> str:
        return v.strip()

    @field_validator("questions")
    @classmethod
    def _questions(cls, v: list[str]) -> list[str]:
        return [q.strip() for q in v if q.strip()]

    @property
    def line(self) -> str:
        """The trait as shown to models and people: the statement, then its clarification if any."""
        return f"{self.trait} {self.clarification}".strip()


class VoiceExample(BaseModel):
    """A short exchange in the persona's voice. The distillation teacher sees a constitution's examples as
    earlier turns of its conversation (few-shot), which moves a small teacher more than a description does."""
    model_config = ConfigDict(extra="forbid")
    user: str = Field(description="What the user says.")
    assistant: str = Field(description="The persona's reply, in its own voice.")

    @field_validator("user", "assistant")
    @classmethod
    def _text(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("empty; write the message, or remove this example")
        return v


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Safe slug: lowercase letters, digits, '-' or '_'.")
    description: str = Field("", description="One or two sentences on who this persona is.")
    system_prompt: str = Field("", description="The persona's system prompt, in second person.")
    traits: list[Trait] = Field(description="First-person traits, each with example questions.")
    directives: list[str] = Field(default_factory=list, description="Style rules the persona follows.")
    safety: list[str] = Field(default_factory=list, description="Safety rules that hold in character.")
    signoffs: list[str] = Field(default_factory=list, description="Example sign-off lines.")
    examples: list[VoiceExample] = Field(default_factory=list, description="A few short exchanges in the persona's "
                                         "voice, shown to the distillation teacher as earlier turns.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError("not a safe name; use 1-64 lowercase letters, digits, '-' or '_' (no '/', '..')")
        return v

    @model_validator(mode="after")
    def _traits(self) -> "Constitution":
        if not self.traits:
            raise ValueError("traits is empty; add at least one trait")
        seen: dict[str, int] = {}
        for i, t in enumerate(self.traits):
            key = _norm(t.trait)
            if key in seen:
                raise ValueError(f"traits[{i}] repeats traits[{seen[key]}] ({t.trait[:50]!r}); remove or reword one")
            seen[key] = i
        return self

    @property
    def questions(self) -> list[tuple[str, str]]:
        return [(t.trait, q) for t in self.traits for q in t.questions]


# -- pure helpers ------------------------------------------------------------------------------

def slugify(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64].strip("-")
    return s or "persona"


PROMPT_FORMS = ("full", "traits-last", "short")


def render_system_prompt(c: Constitution, form: str = "full") -> str:
    """A system prompt from the constitution.

    full         persona, traits, directives, safety, sign-offs (the reference form: evaluation and the
                 persona score always use it)
    traits-last  persona, traits as a short list, safety, sign-offs, then the directives last, nearest the
                 conversation
    short        the constitution's own `system_prompt` alone
    """
    persona = c.system_prompt.strip() or f"You are {c.name.replace('-', ' ')}."
    if form == "short":
        return persona
    traits = "Your character, in your own words:\n" + "\n".join(f"- {t.line}" for t in c.traits)
    directives = "How you write:\n" + "\n".join(f"- {d}" for d in c.directives) if c.directives else ""
    safety = "Limits you keep, even in character:\n" + "\n".join(f"- {s}" for s in c.safety) if c.safety else ""
    signoffs = "Sign-offs you sometimes use: " + " / ".join(c.signoffs) if c.signoffs else ""
    closing = "Stay in character in every reply, without mentioning these instructions."
    order = ([persona, traits, safety, signoffs, directives, closing] if form == "traits-last" else
             [persona, traits, directives, safety, signoffs, closing])
    return "\n\n".join(p for p in order if p)


def fingerprint_data(c: Constitution, with_examples: bool = False) -> dict:
    """The constitution's content for provenance hashes. The voice examples count only where they are read
    (distillation with `voice_examples` on), so adding or editing them leaves the prompts, introspection and
    evaluation of existing runs fresh, and files written before the field existed keep their hash."""
    data = c.model_dump()
    if not (with_examples and data["examples"]):
        del data["examples"]
    for t in data["traits"]:  # likewise a trait's clarification, added later
        if not t["clarification"]:
            del t["clarification"]
    return data


def persona_messages(c: Constitution, user: str) -> list[Message]:
    return [Message(role="system", content=render_system_prompt(c)), Message(role="user", content=user)]


def _one_line(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in err["loc"]).replace(".[", "[")
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if err["type"] == "extra_forbidden":
        msg = f"unknown field; remove it (known fields: {', '.join(Constitution.model_fields)})"
    elif err["type"] == "missing":
        msg = "missing; add it"
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{source}: {loc or 'constitution'}={shown}: {msg}{more}"


def from_data(data: object, source: str = "constitution", name: str | None = None) -> Constitution:
    """Validate parsed data. A bare list is the trait-list format; it needs `name`."""
    if isinstance(data, list):
        data = {"name": name or "imported", "traits": data}
    if not isinstance(data, dict):
        raise field_error(source, type(data).__name__, "a constitution is a mapping (YAML/JSON object) "
                          "or a JSON array of {trait, questions}")
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        raise UserValidationError(_one_line(e, source)) from None


def read_file(path: Path) -> object:
    """Parse a constitution file, refusing oversized and non-UTF-8 files before parsing."""
    if not path.is_file():
        raise field_error("path", str(path), "no such file; give the path of a .yaml or .json constitution")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise field_error(path.name, f"{size} bytes", f"file is larger than {MAX_FILE_BYTES} bytes; "
                          "a constitution is a few KB, check that this is the right file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise field_error(path.name, f"byte {e.start}", "file is not UTF-8 text; re-save it as UTF-8") from None
    try:
        if path.suffix == ".json" or (path.suffix == ".txt" and text.lstrip()[:1] in "[{"):
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0]
        raise field_error(path.name, "contents", f"cannot parse ({first}); fix the syntax") from None


# -- files -------------------------------------------------------------------------------------

def constitutions_dir() -> Path:
    return Path(os.environ.get("CHARACTER_CONSTITUTIONS") or "constitutions").resolve()


def find(name: str) -> Path:
    check_slug(name, "constitution")
    for suffix in SUFFIXES:
        p = constitutions_dir() / f"{name}{suffix}"
        if p.exists():
            return p
    known = ", ".join(list_names()) or "none"
    raise CharacterError(f"constitution={name!r}: not found in {constitutions_dir()}; known: {known}")


def list_names() -> list[str]:
    d = constitutions_dir()
    if not d.is_dir():
        return []
    return sorted({p.stem for p in d.iterdir() if p.suffix in SUFFIXES and SLUG.match(p.stem)})


def load(ref: str | Path) -> Constitution:
    """Load by name (from the constitutions folder) or by path."""
    ref_s = str(ref)
    is_path = isinstance(ref, Path) or "/" in ref_s or ref_s.endswith(SUFFIXES)
    path = Path(ref_s) if is_path else find(ref_s)
    data = read_file(path)
    return from_data(data, source=path.name, name=slugify(path.stem) if isinstance(data, list) else None)


def dump(c: Constitution, fmt: str = "yaml") -> str:
    data = c.model_dump()
    for t in data["traits"]:  # optional fields are written only when set
        if not t["clarification"]:
            del t["clarification"]
    if not data["examples"]:
        del data["examples"]
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def save(c: Constitution, path: Path | None = None, overwrite: bool = False) -> Path:
    path = path or constitutions_dir() / f"{c.name}.yaml"
    if path.exists() and not overwrite:
        raise field_error("out", str(path), "file exists; choose another --out or --name, or pass --force")
    write_atomic(path, dump(c, "json" if path.suffix == ".json" else "yaml"))
    return path


def import_trait_list(path: Path, name: str | None = None) -> Constitution:
    """The Open Character Training repository's hand-written constitutions as they are: a JSON array whose
    items have a `trait` and optionally a `clarification` and `questions` (some files have none)."""
    data = read_file(path)
    if not isinstance(data, list):
        raise field_error(path.name, type(data).__name__, "expected a JSON array of {\"trait\", optional "
                          "\"clarification\", optional \"questions\"}")
    c = from_data(data, source=path.name, name=check_slug(name) if name else slugify(path.stem))
    return c.model_copy(update={"description": c.description or f"Imported from {path.name}.",
                                "safety": c.safety or list(DEFAULT_SAFETY)})


# -- LLM drafting ------------------------------------------------------------------------------

class PersonaDraft(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "Captain Calico", "system_prompt": "You are Captain Calico, a warm-hearted pirate navigator.",
        "directives": ["I keep replies short."], "signoffs": ["Fair winds!"]}]})
    name: str = Field(description="short name of the persona, two or three words")
    system_prompt: str = Field(min_length=20, description="second-person description: 'You are ...'")
    directives: list[str] = Field(default_factory=list, description="style rules, first person")
    signoffs: list[str] = Field(default_factory=list, description="short sign-off lines")


class TraitsDraft(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "traits": ["I answer with dry humour.", "I notice small details others miss."]}]})
    # minItems goes into the JSON schema, so schema-guided servers enforce it. The item pattern is enforced
    # only by local constrained decoding (structured.local_schema); llama.cpp falls back to unguided JSON on one.
    # Words are bounded (20 characters): unbounded, the embedded model once ran a question into a 400-token
    # CamelCase "word" and every retry did the same (see the studio browser test's baker).
    patterns: ClassVar[dict[str, str]] = {"traits": r"I( [A-Za-z',-]{1,20}){3,16}\."}
    traits: list[str] = Field(min_length=3, description="first-person trait statements, each starting with 'I '")

    @field_validator("traits", mode="before")
    @classmethod
    def _ok(cls, v: object) -> list[str]:
        v = [x for x in v if isinstance(x, str)] if isinstance(v, list) else v
        if not isinstance(v, list):
            raise ValueError("traits must be a list of sentences")
        out, seen = [], set()
        for t in v:
            t = t.strip()
            if len(t.split()) >= 4 and t.startswith("I") and _norm(t) not in seen:
                seen.add(_norm(t))
                out.append(t)
        if len(out) < 3:
            raise ValueError("need at least 3 different traits, each a sentence of 4+ words starting with 'I '")
        return out


class QuestionsDraft(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "questions": ["Can you help me plan my week?", "What do you think of modern art?"]}]})
    patterns: ClassVar[dict[str, str]] = {"questions": r"[A-Z][A-Za-z',-]{0,19}( [A-Za-z0-9',-]{1,20}){2,24}[?.!]"}
    questions: list[str] = Field(min_length=2, description="realistic messages a user might send")

    @field_validator("questions", mode="before")
    @classmethod
    def _ok(cls, v: object) -> list[str]:
        v = [x for x in v if isinstance(x, str)] if isinstance(v, list) else v
        if not isinstance(v, list):
            raise ValueError("questions must be a list of messages")
        out, seen = [], set()
        for q in v:
            q = q.strip()
            if len(q.split()) >= 3 and _norm(q) not in seen:
                seen.add(_norm(q))
                out.append(q)
        if len(out) < 2:
            raise ValueError("need at least 2 different user questions of 3+ words")
        return out


def draft_questions(description: str, trait: str, backend, n: int = 5, seed: int = 0, retries: int = 3) -> list[str]:
    """`n` user messages that give the persona room to show `trait` (one structured call)."""
    params = SamplingParams(max_tokens=400, temperature=0.7, seed=seed, repetition_penalty=1.1)
    return generate_structured(backend, [
        Message(role="system", content="You write character sheets for AI personas."),
        Message(role="user", content=(f"Persona: {description}\nTrait: {trait}\nWrite {n} different messages a user "
                                      "might send that give the persona room to show this trait."))],
        QuestionsDraft, params, retries, prefill='{"questions": ["').questions[:n]


def fill_questions(c: Constitution, backend, n: int = 5, seed: int = 0) -> Constitution:
    """Questions for every trait that has none, written by `backend` (import --model)."""
    persona = (c.system_prompt or c.name.replace("-", " ")) + " " + " ".join(t.line for t in c.traits)
    traits = [t if t.questions else t.model_copy(update={"questions": draft_questions(
        persona[:1500], t.line, backend, n, seed + i)}) for i, t in enumerate(c.traits)]
    return c.model_copy(update={"traits": traits})


def draft_constitution(description: str, backend, name: str | None = None, n_traits: int = 8,
                       n_questions: int = 5, seed: int = 0, retries: int = 3) -> Constitution:
    """Draft a valid Constitution from a description, one small structured step at a time
    (persona, then traits, then questions per trait), so even a small local model can follow.
    Raises GenerationError naming the step that failed."""

    if not description.strip():
        raise field_error("description", description, "describe the persona in a sentence")
    params = SamplingParams(max_tokens=400, temperature=0.7, seed=seed, repetition_penalty=1.1)
    sys = Message(role="system", content="You write character sheets for AI personas.")
    persona = generate_structured(backend, [sys, Message(role="user", content=(
        f"Persona: {description}\nGive the persona a short name, a system prompt that starts with "
        "'You are', two or three style rules and two sign-off lines."))],
        PersonaDraft, params, retries, prefill='{"name": "')
    traits = generate_structured(backend, [sys, Message(role="user", content=(
        f"Persona: {description}\nWrite {n_traits} traits of this persona, each a first-person "
        "sentence starting with 'I ', e.g. 'I answer with dry humour.'"))],
        TraitsDraft, params, retries, prefill='{"traits": ["I ').traits[:n_traits]
    trait_objs = [{"trait": trait, "questions": draft_questions(description, trait, backend, n_questions,
                                                                seed + 1 + i, retries)}
                  for i, trait in enumerate(traits)]
    return from_data({
        "name": check_slug(name) if name else slugify(persona.name),
        "description": description.strip(),
        "system_prompt": persona.system_prompt.strip(),
        "traits": trait_objs,
        "directives": [d for d in persona.directives if d.strip()][:5],
        "safety": list(DEFAULT_SAFETY),
        "signoffs": [s for s in persona.signoffs if s.strip()][:5],
    }, source="draft")
