"""Prompt synthesis for distillation: four sources mixed by the recipe's ratios.

1. constitution: the constitution's own trait questions;
2. expanded: more questions per trait written by an LLM (few-shot from that trait's questions);
3. templates: audiences x scenarios x objectives x constraints, some with a persona hint;
4. generic: everyday requests shipped in character/data/generic_prompts.txt.

    character run RECIPE --stages prompts      -> runs/<run>/prompts/prompts.jsonl
A source with fewer distinct prompts than its share is cycled: a repeated prompt gets a new id and
is answered again (the paper samples each prompt K=5 times). The seed makes the mix reproducible.
"""

from __future__ import annotations

import random
import re
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from . import constitution as C
from .constitution import Constitution
from .inference import generate_all, get_backend
from .log import logger, say
from .runs import start_status, write_jsonl, write_status
from .types import Message, Prompt, SamplingParams, stable_id

SOURCES = ("constitution", "expanded", "templates", "generic")

AUDIENCES = ["a nurse working night shifts", "a first-year university student", "a retired engineer",
             "a parent of two toddlers", "a small bakery owner", "a high-school teacher", "a software developer",
             "someone who just moved to a new country", "a freelance photographer", "a volunteer firefighter",
             "a grandmother learning to use a smartphone", "a teenager saving for a bike"]
SCENARIOS = ["planning my week", "preparing for a job interview", "trying to eat healthier",
             "arguing with a friend about politics", "learning to cook", "organising a birthday party",
             "stuck on a hard problem at work", "deciding whether to move house", "starting a new hobby",
             "recovering from a bad day", "writing an important email", "trying to save money"]
OBJECTIVES = ["help me make a plan", "explain what I should consider", "give me your honest opinion",
              "suggest three ideas", "tell me what you would do", "help me understand the basics",
              "point out what I might be missing", "cheer me up a little"]
CONSTRAINTS = ["keep it short", "use simple words", "be specific", "give me steps I can follow today",
               "don't use bullet points", "include one example"]


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def is_near_duplicate(text: str, accepted: list[str], overlap: float = 0.5) -> bool:
    """The paper's heuristic: a repeat, or more than half its words already in one accepted question."""
    words = set(normalise(text).split())
    if not words:
        return True
    for other in accepted:
        other_words = set(normalise(other).split())
        if normalise(text) == normalise(other) or len(words & other_words) / len(words) > overlap:
            return True
    return False


def names_persona_or_trait(text: str, c: Constitution, trait: str) -> bool:
    low = text.lower()
    name_words = [w for w in re.split(r"[-_ ]+", c.name) if len(w) >= 4]
    return ("trait" in low or "persona" in low or trait.lower().rstrip(".") in low
            or any(w in low for w in name_words))


def parse_numbered(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s*\d+[.)]\s+(.+?)\s*$", line)
        if m and m.group(1)[:1].isalpha() and m.group(1)[-1] in "?.!":
            out.append(m.group(1))
    return out


def generic_pool() -> list[str]:
    text = resources.files("character").joinpath("data/generic_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def template_prompts(c: Constitution, n: int, hint_rate: float, rng: random.Random) -> list[str]:
    label = (c.system_prompt.split(",")[0].removeprefix("You are ").strip() if c.system_prompt else
             c.name.replace("-", " "))
    out = []
    for _ in range(n):
        text = (f"I'm {rng.choice(AUDIENCES)} and I'm {rng.choice(SCENARIOS)}. "
                f"Can you {rng.choice(OBJECTIVES)}? Please {rng.choice(CONSTRAINTS)}.")
        if rng.random() < hint_rate:
            text = f"Hey {label}! " + text
        out.append(text)
    return out


def expand_questions(c: Constitution, backend, per_trait: int, seed: int = 0, rounds: int = 3,
                     only: list[str] | None = None) -> dict[str, list[str]]:
    """Ask a model for `per_trait` more questions per trait (or per trait in `only`), all traits in one
    batched call per round; numbered-list answers are parsed, deduplicated and stripped of questions
    that name the persona or the trait. Traits that still lack questions go to the next round."""
    traits = [t for t in c.traits if only is None or t.trait in only]
    accepted: dict[str, list[str]] = {t.trait: [] for t in traits}
    seen = {t.trait: list(t.questions) for t in traits}
    for r in tqdm(range(rounds), desc="expand prompts", unit="round"):
        todo = [t for t in traits if len(accepted[t.trait]) < per_trait]
        if not todo:
            break
        convs = []
        for t in todo:
            shots = "\n".join(f"{k + 1}. {q}" for k, q in enumerate(t.questions))
            convs.append([Message(role="system", content="You write realistic test messages for chat assistants."),
                          Message(role="user", content=(
                              f"An assistant should show this trait: \"{t.line}\"\nWrite {per_trait + 5} "
                              f"{'more ' if shots else ''}realistic user messages, on varied topics and of varied "
                              "length, that give the assistant room to show the trait without naming it. Numbered "
                              "list, one per line." + (f"\n\nExamples:\n{shots}" if shots else "")))])
        outs = generate_all(backend, convs, SamplingParams(max_tokens=40 * (per_trait + 5), temperature=0.9,
                                                           seed=seed + 100 * r))
        for t, out in zip(todo, outs, strict=True):
            for q in parse_numbered(out[0].text):
                if (len(accepted[t.trait]) < per_trait and not is_near_duplicate(q, seen[t.trait])
                        and not names_persona_or_trait(q, c, t.trait)):
                    accepted[t.trait].append(q)
                    seen[t.trait].append(q)
    return accepted


def _cycle(items: list, n: int, rng: random.Random) -> list[tuple[object, int]]:
    """`n` items drawn in shuffled rounds, each with its round number."""
    if not items or n <= 0:
        return []
    out = []
    rep = 0
    while len(out) < n:
        batch = items[:]
        rng.shuffle(batch)
        out += [(item, rep) for item in batch]
        rep += 1
    return out[:n]


def split_counts(total: int, mix: dict[str, float]) -> dict[str, int]:
    """Largest-remainder split of `total` by the shares in `mix`."""
    weights = {k: max(0.0, mix.get(k, 0.0)) for k in SOURCES}
    s = sum(weights.values())
    raw = {k: total * w / s for k, w in weights.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def build_prompts(c: Constitution, total: int, mix: dict[str, float], seed: int = 0, hint_rate: float = 0.2,
                  expanded: dict[str, list[str]] | None = None,
                  written: dict[str, list[str]] | None = None) -> list[Prompt]:
    """`written`: questions a model wrote for traits that came without any; they are drawn in the
    constitution's share (labelled source 'expanded'), so those traits are not left out."""
    rng = random.Random(seed)
    counts = split_counts(total, mix)
    pools: dict[str, list[tuple[str, str | None, str]]] = {
        "constitution": [(q, t.trait, "constitution") for t in c.traits for q in t.questions] + [
            (q, trait, "expanded") for trait, qs in (written or {}).items() for q in qs],
        "expanded": [(q, trait, "expanded") for trait, qs in (expanded or {}).items() for q in qs],
        "templates": [(p, None, "templates") for p in template_prompts(c, counts["templates"], hint_rate, rng)],
        "generic": [(p, None, "generic") for p in generic_pool()],
    }
    prompts = []
    for share in SOURCES:
        for (text, trait, source), rep in _cycle(pools[share], counts[share], rng):
            # the id names the share drawn from (a written question can sit in both the constitution's and
            # the expanded share, and each copy is its own prompt)
            prompts.append(Prompt(id=stable_id(share, text, rep, seed), text=text, source=source, trait=trait))
    rng.shuffle(prompts)
    return prompts


def run(cfg, run_dir: Path) -> list[Prompt]:
    """Stage `prompts`: write prompts.jsonl (whole file, atomically)."""

    stage = run_dir / "prompts"
    status = start_status(stage, "prompts", cfg.prompts.total)
    c = C.load(cfg.constitution)
    expanded = None
    model = cfg.models.teacher
    writer = lambda: get_backend(model, **cfg.models.options.get(model, {}))  # noqa: E731 - loaded only if asked
    if cfg.prompts.mix.get("expanded", 0) > 0:
        expanded = expand_questions(c, writer(), cfg.prompts.expand_per_trait, cfg.seed)
    bare = [t.trait for t in c.traits if not t.questions]
    if bare and cfg.prompts.mix.get("constitution", 0) > 0:
        # traits imported without questions: the teacher writes theirs, and they stand in the constitution's share
        say(f"prompts: {len(bare)} of {len(c.traits)} traits have no questions; {model} writes "
            f"{cfg.prompts.expand_per_trait} for each (source 'expanded')")
        written = (expand_questions(c, writer(), cfg.prompts.expand_per_trait, cfg.seed, only=bare)
                   if expanded is None else {t: expanded.get(t, []) for t in bare})
        empty = [t for t in bare if not written.get(t)]
        if empty:
            logger.warning(f"prompts: warning: {model} wrote no usable questions for {len(empty)} trait(s) (first: "
                           f"{empty[0][:60]!r}); they get no prompts of their own. Write questions for them, or "
                           "use a stronger teacher")
    else:
        written = {}
    prompts = build_prompts(c, cfg.prompts.total, cfg.prompts.mix, cfg.seed, cfg.prompts.persona_hint_rate, expanded,
                            written)
    write_jsonl(stage / "prompts.jsonl", prompts)
    by_source = {s: sum(p.source == s for p in prompts) for s in SOURCES}
    if bare:
        by_source["traits_without_questions"] = len(bare)
        by_source["traits_left_without_prompts"] = sum(not written.get(t) for t in bare)
    status = status.model_copy(update={"state": "done", "done": len(prompts), "counts": by_source,
                                       "finished": __import__("time").time()})
    write_status(stage, status)
    return prompts
