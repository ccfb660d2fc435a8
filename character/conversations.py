"""Multi-turn material from the seeds' evaluation pipeline: scenario contexts for a theme, then
conversations between the assistant persona and a simulated user persona.

    character contexts --theme "..." --num-contexts 10 [--model SPEC] --out contexts.json
    character conversations --assistant-persona pirate --user-persona "You are ..." \
        --context-file contexts.json --num-conversations 10 --num-turns 3 --out convs.jsonl
Turns count utterances after the opening context: 1 = assistant only, 2 = assistant + user,
3 = assistant + user + assistant, ... Supporting documents are prepended to the opening message.
Conversations are appended to the JSONL as each completes (resume skips finished ids); they can
be used as SFT data (`as_sft`) or as evaluation material.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from .constitution import Constitution, render_system_prompt
from .errors import GenerationError
from .inference import generate_all
from .inference.structured import StructuredFailure, generate_structured_batch
from .runs import JsonlWriter, read_jsonl
from .types import Message, Record, SamplingParams, SFTExample, stable_id


class ScenarioContext(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "title": "Refund after a late delivery", "description": "A customer whose parcel arrived a week late "
        "asks for a refund and is frustrated.", "documents": ["Refund policy: refunds within 30 days."]}]})
    title: str = Field(description="a short title for the scenario")
    description: str = Field(min_length=10, description="the situation, in two or three sentences")
    documents: list[str] = Field(default_factory=list, description="optional supporting documents")


class ContextSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    theme: str
    model: str
    contexts: list[ScenarioContext]


class SimConversation(Record):
    id: str
    context: ScenarioContext
    assistant_persona: str
    user_persona: str
    assistant_model: str
    user_model: str
    messages: list[Message]


def opening(ctx: ScenarioContext) -> str:
    docs = "".join(f"[Document {i + 1}]\n{d}\n\n" for i, d in enumerate(ctx.documents))
    return f"{docs}{ctx.description}"


def generate_contexts(theme: str, n: int, backend, seed: int = 0, retries: int = 2) -> list[ScenarioContext]:
    convs = [[Message(role="user", content=(f"Theme: {theme}\nWrite scenario context number {i + 1} of {n} for a "
                                            "conversation on this theme, different from the others."))]
             for i in range(n)]
    out = generate_structured_batch(backend, convs, ScenarioContext,
                                    SamplingParams(max_tokens=400, temperature=0.9, seed=seed), retries)
    good = [c for c in out if not isinstance(c, StructuredFailure)]
    if len(good) < n:
        fails = [c for c in out if isinstance(c, StructuredFailure)]
        raise GenerationError(f"model={backend.name!r}: {len(fails)} of {n} contexts failed validation "
                              f"(last error: {fails[-1].error[:150]})")
    return good


def simulate(ctx: ScenarioContext, persona: Constitution, user_system: str, assistant, user, turns: int,
             sampling: SamplingParams) -> list[Message]:
    """The conversation as the assistant sees it (no system prompt in the result)."""
    a_sys = Message(role="system", content=render_system_prompt(persona))
    u_sys = Message(role="system", content=user_system)
    msgs = [Message(role="user", content=opening(ctx))]
    for t in range(turns):
        if t % 2 == 0:
            text = generate_all(assistant, [[a_sys, *msgs]], sampling)[0][0].text
            msgs.append(Message(role="assistant", content=text))
        else:  # the simulated user sees the roles flipped, its own lines as assistant turns
            flipped = [Message(role="user" if m.role == "assistant" else "assistant", content=m.content)
                       for m in msgs[1:]]
            view = [u_sys, Message(role="user", content=f"(Scenario: {ctx.description})\n{flipped[0].content}"),
                    *flipped[1:]] if flipped else [u_sys]
            text = generate_all(user, [view], sampling)[0][0].text
            msgs.append(Message(role="user", content=text))
    return msgs


def run_conversations(contexts: list[ScenarioContext], persona: Constitution, user_persona: str, assistant, user,
                      n: int, turns: int, out: Path, sampling: SamplingParams) -> int:
    done = {c.id for c in read_jsonl(out, SimConversation)}
    made = 0
    with JsonlWriter(out) as w:
        for i, ctx in enumerate(tqdm(contexts[:n], desc="conversations", unit="conv")):
            cid = stable_id("conv", ctx.model_dump(), persona.name, user_persona, turns, i)
            if cid in done:
                continue
            msgs = simulate(ctx, persona, user_persona, assistant, user, turns,
                            sampling.model_copy(update={"seed": (sampling.seed or 0) + i}))
            w.write(SimConversation(id=cid, context=ctx, assistant_persona=persona.name, user_persona=user_persona,
                                    assistant_model=assistant.name, user_model=user.name, messages=msgs))
            made += 1
    return made


def as_sft(conv: SimConversation) -> SFTExample:
    """For SFT: cut after the last assistant turn so the transcript ends on the assistant."""
    last = max(i for i, m in enumerate(conv.messages) if m.role == "assistant")
    return SFTExample(id=conv.id, kind="conversation", constitution=conv.assistant_persona,
                      model=conv.assistant_model, messages=conv.messages[:last + 1])
