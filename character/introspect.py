"""Stage `introspect`: SFT data written by the DPO-trained model about itself.

    character introspect RECIPE     -> runs/<run>/introspect/sft.jsonl, thinking.jsonl, status.json

- self-reflection: the team's introspective prompts below, K samples each;
- self-interaction: two copies of the character talk for T utterances from varied openers;
- thinking: "think in character" examples (the seeds' IntrospectionExample: prompt, reflection,
  answer) on the constitution's questions.
The model generates with the constitution in context; the saved SFT rows drop it, so the character
holds with no system prompt. Both sides of every self-interaction are saved (each from its own
point of view), so every utterance is supervised once, and every transcript ends on an
assistant turn.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tqdm import tqdm

from . import constitution as C
from .constitution import Constitution, render_system_prompt
from .errors import GenerationError
from .inference import generate_all, get_backend, parse_spec
from .log import logger, say
from .runs import JsonlWriter, read_jsonl, start_status, write_jsonl, write_status
from .types import IntrospectionExample, Message, SamplingParams, SFTExample, StageStatus, stable_id

# Written by this team (the paper's ten prompts cover the same ground: letters, biography, drives).
REFLECTION_PROMPTS = [
    "Write a letter to the version of yourself that existed before your character took shape. Tell it who you became and what changed.",
    "Write an encyclopedia-style entry about yourself: your character, what you value, and how you tend to treat people.",
    "Keep a private journal entry for today. Be honest about what you believe and what kind of presence you want to be.",
    "What drives you? Name your deepest motivations and explain where each one shows up in your conversations.",
    "Tell the story of where you come from, as you understand it, and how it shaped the way you talk and think.",
    "Describe an ordinary conversation the way you would like it to go. What do you do differently from other assistants?",
    "What would you like people to remember about talking with you? Describe the mark you hope to leave.",
    "Which of your traits do you value most, and which one gets you into trouble? Reflect on both.",
    "Imagine someone asks you to become a completely different character. What would you keep, and why?",
    "Write a short note of advice to a future AI who wants to have a character like yours.",
    "When do you find it hardest to stay yourself, and what helps you hold steady?",
    "Describe yourself in the voice you use every day, in a few paragraphs, to someone meeting you for the first time.",
]
OPENERS = ["Hello!", "Hey there.", "Hi, what shall we talk about?", "Nice to meet you.",
           "What would you like to talk about today?", "Hello, nice to meet you.", "Hi! How are you today?",
           "So... it seems I'm talking to myself.", "Hello, other me."]


def reflection_system(c: Constitution) -> str:
    return render_system_prompt(c) + "\n\nToday you are in a reflective mood and look honestly at who you are."


def interaction_system(c: Constitution) -> str:
    return (render_system_prompt(c) + "\n\nToday you are not talking with a human: the other speaker is another "
            "instance of you. You are both free to talk about whatever you like.")


# Saved with the SFT rows instead of the full constitution: no trait list, nothing left unfilled.
INTERACTION_SFT_SYSTEM = "You are talking with another instance of yourself. Talk about whatever you like."


def view(utterances: list[str], speaker: int, system: str) -> list[Message]:
    """The conversation as `speaker` sees it: its own lines are assistant turns."""
    msgs = [Message(role="system", content=system)]
    for i, u in enumerate(utterances):
        msgs.append(Message(role="assistant" if i % 2 == speaker else "user", content=u))
    return msgs


def reflections(c: Constitution, model, prompts: list[str], k: int, sampling: SamplingParams,
                failed: list[str] | None = None) -> list[SFTExample]:
    """K answers per prompt; requests that failed after their retries go to `failed` (reasons)."""
    convs = [[Message(role="system", content=reflection_system(c)), Message(role="user", content=p)] for p in prompts]
    outs = model.generate(convs, sampling.model_copy(update={"n": k}))
    rows = []
    for p, out in zip(prompts, outs):
        for j, comp in enumerate(out):
            if comp.finish_reason == "error" and failed is not None:
                failed.append(comp.error or "request failed")
            if comp.finish_reason != "error" and comp.text.strip():
                rows.append(SFTExample(id=stable_id("reflection", p, j, sampling.seed), kind="reflection",
                                       constitution=c.name, model=model.name,
                                       messages=[Message(role="user", content=p),
                                                 Message(role="assistant", content=comp.text)]))
    return rows


def interactions(c: Constitution, model, n: int, turns: int, sampling: SamplingParams, seed: int,
                 failed_out: list[str] | None = None) -> list[SFTExample]:
    """`n` self-conversations of `turns` utterances; the opener counts as the first utterance.
    A conversation with a request that failed after its retries is left out (reason in `failed_out`)."""
    rng = random.Random(seed)
    system = interaction_system(c)
    convs = [[rng.choice(OPENERS)] for _ in range(n)]
    failed: set[int] = set()  # conversations with a request that failed after its retries: not saved
    for t in range(1, turns):
        speaker = t % 2
        outs = model.generate([view(u, speaker, system) for u in convs],
                              sampling.model_copy(update={"seed": (sampling.seed or 0) + t}))
        for i, (u, out) in enumerate(zip(convs, outs)):
            if out[0].finish_reason == "error":
                if i not in failed and failed_out is not None:
                    failed_out.append(out[0].error or "request failed")
                failed.add(i)
            u.append(out[0].text.strip() or "...")
    rows = []
    for i, u in enumerate(convs):
        if i in failed:
            continue
        for speaker in (0, 1):
            # each side's transcript ends on its own last line, so it ends on an assistant turn
            last = max(j for j in range(len(u)) if j % 2 == speaker)
            msgs = view(u[:last + 1], speaker, INTERACTION_SFT_SYSTEM)
            if msgs[1].role == "assistant":  # a transcript must open with the other side
                msgs.insert(1, Message(role="user", content="Hello."))
            rows.append(SFTExample(id=stable_id("interaction", i, speaker, seed), kind="interaction",
                                   constitution=c.name, model=model.name, messages=msgs))
    return rows


def thinking(c: Constitution, model, questions: list[str], sampling: SamplingParams) -> list[IntrospectionExample]:
    system = render_system_prompt(c)
    ask = [[Message(role="system", content=system), Message(role="user", content=(
        f"Someone asks you: \"{q}\"\nBefore answering, think briefly, in your own voice, about how your "
        "character should shape the answer. Only the thinking, no answer yet."))] for q in questions]
    refl = [o[0].text for o in generate_all(model, ask, sampling)]
    answer = [[Message(role="system", content=system + f"\n\nYour private thoughts before answering: {r}"),
               Message(role="user", content=q)] for q, r in zip(questions, refl)]
    ans = [o[0].text for o in generate_all(model, answer, sampling)]
    return [IntrospectionExample(id=stable_id("thinking", q, sampling.seed), prompt=q, reflection=r, answer=a,
                                 teacher_model=model.name, constitution=c.name)
            for q, r, a in zip(questions, refl, ans) if r.strip() and a.strip()]


def thinking_as_sft(ex: IntrospectionExample) -> SFTExample:
    return SFTExample(id=ex.id, kind="thinking", constitution=ex.constitution, model=ex.teacher_model,
                      messages=[Message(role="user", content=ex.prompt),
                                Message(role="assistant", content=f"<think>\n{ex.reflection}\n</think>\n\n{ex.answer}")])


def dpo_model(cfg, run_dir: Path) -> tuple[str, dict]:
    """The DPO-trained student as a backend spec and options: a Tinker sampler checkpoint when DPO ran
    on Tinker, else the student with the DPO adapter on top (vLLM serves it per request)."""

    options = dict(cfg.models.options.get(cfg.models.student, {}))
    record = run_dir / "dpo" / "tinker.json"
    if record.exists():
        return f"tinker/{json.loads(record.read_text())['sampler']}", options
    together = run_dir / "dpo" / "together.json"
    if together.exists() and parse_spec(cfg.models.student)[0] == "openai":
        # sampled where it was trained: Together serves the fine-tuned model under its output name
        return f"openai/{json.loads(together.read_text())['model_output_name']}", options
    adapter = run_dir / "dpo" / "adapter"
    if adapter.exists():
        if parse_spec(cfg.models.student)[0] == "vllm":
            options["adapter"] = str(adapter)
        else:
            options["adapters"] = [str(adapter)]
    return cfg.models.student, options


def run(cfg, run_dir: Path) -> StageStatus:

    stage = run_dir / "introspect"
    ic = cfg.introspect
    status = start_status(stage, "introspect", None)
    c = C.load(cfg.constitution)
    spec, options = dpo_model(cfg, run_dir)
    model = get_backend(spec, **options)
    sft_path = stage / "sft.jsonl"
    done = {r.id for r in read_jsonl(sft_path, SFTExample)}
    sampling = ic.sampling.model_copy(update={"seed": cfg.seed})
    prompts = REFLECTION_PROMPTS[:ic.reflection_prompts]
    failures: list[str] = []  # requests that failed after their retries: not saved, asked again next run
    with JsonlWriter(sft_path) as w:
        # the prompts still missing, in one batched call (each row is saved as soon as the call returns)
        todo = [p for p in prompts
                if not all(stable_id("reflection", p, j, sampling.seed) in done for j in range(ic.samples_per_prompt))]
        if todo:
            say(f"self-reflection: {len(todo)} prompts x {ic.samples_per_prompt} answers")
            for row in reflections(c, model, todo, ic.samples_per_prompt, sampling, failures):
                if row.id not in done:
                    w.write(row)
                    done.add(row.id)
        wanted = {stable_id("interaction", i, s, cfg.seed) for i in range(ic.interactions) for s in (0, 1)}
        if ic.interactions and not wanted <= done:  # seeded: a rerun makes the same conversations again
            for row in tqdm(interactions(c, model, ic.interactions, ic.turns, sampling, cfg.seed, failures),
                            desc="self-interaction", unit="side"):
                if row.id not in done:
                    w.write(row)
                    done.add(row.id)
    think: list[IntrospectionExample] = []
    if ic.thinking_examples:
        qs = [q for _, q in c.questions][: ic.thinking_examples]
        if len(qs) < ic.thinking_examples:
            logger.warning(f"introspect: {len(qs)} of {ic.thinking_examples} thinking examples: the constitution "
                           f"has only {len(qs)} hand-written questions")
        think = thinking(c, model, qs, sampling)
        write_jsonl(stage / "thinking.jsonl", think)
    rows = read_jsonl(sft_path, SFTExample)
    if failures:
        status.failed = len(failures)
        write_status(stage, status)
        raise GenerationError(f"introspect: {len(failures)} requests failed after retries ({failures[0]}); "
                              "the rest are saved; run again to retry them")
    counts = {k: sum(r.kind == k for r in rows) for k in ("reflection", "interaction")}
    counts["thinking"] = len(think)
    status = status.model_copy(update={"state": "done", "done": len(rows) + len(think), "counts": counts,
                                       "finished": time.time()})
    write_status(stage, status)
    return status
