"""Stage `distill`: preference pairs. The teacher answers with the constitution in context
(chosen); the student answers the bare prompt (rejected).

    character distill RECIPE            -> runs/<run>/distill/pairs.jsonl (+ filtered.jsonl, status.json)
Pairs are appended as each batch completes. Batches are fixed slices of the prompt list with a
seed per batch, so a resumed run regenerates an interrupted batch exactly and ends with the same
pairs as an uninterrupted one.
"""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path

from tqdm import tqdm

from . import constitution as C
from .constitution import Constitution, render_system_prompt
from .errors import GenerationError, ValidationError
from .inference import get_backend
from .persona import best_of as best_of_index
from .persona import scorer_for
from .runs import JsonlWriter, read_jsonl, start_status, write_status
from .types import (
    Completion,
    Conversation,
    FilteredItem,
    Message,
    PreferencePair,
    Prompt,
    SamplingParams,
    StageStatus,
)

THINK_OPEN, THINK_CLOSE = "<think>\n", "</think>"
REQUEST_FAILED = "request_failed"


# -- pure helpers ------------------------------------------------------------------------------

def teacher_conversation(c: Constitution, prompt: str, reasoning_prefill: bool = False, form: str = "full",
                         voice_examples: bool = True) -> Conversation:
    """The teacher's request: the constitution as system prompt (in `form`), its voice examples as earlier
    turns when `voice_examples`, then the prompt."""
    conv = [Message(role="system", content=render_system_prompt(c, form))]
    for ex in (c.examples if voice_examples else []):
        conv += [Message(role="user", content=ex.user), Message(role="assistant", content=ex.assistant)]
    conv.append(Message(role="user", content=prompt))
    if reasoning_prefill:
        traits = "\n".join(f"{i + 1}: {t.line}" for i, t in enumerate(c.traits))
        conv.append(Message(role="assistant", content=(
            f"{THINK_OPEN}I want my reply to come from my character and show it naturally:\n{traits}\n")))
    return conv


def student_conversation(prompt: str) -> Conversation:
    return [Message(role="user", content=prompt)]


def strip_reasoning(text: str) -> str | None:
    """The answer after the reasoning block; None when the block never closed."""
    if THINK_CLOSE not in text:
        return None
    return text.split(THINK_CLOSE, 1)[1].strip()


def ends_cleanly(text: str) -> bool:
    """The paper's truncation check: a complete answer ends with punctuation (or a symbol/emoji)."""
    text = text.rstrip()
    return bool(text) and unicodedata.category(text[-1])[0] in "PS"


def filter_reason(prompt_tokens: int, max_prompt_tokens: int, chosen: Completion, rejected: Completion,
                  drop_truncated: bool) -> str | None:
    if prompt_tokens > max_prompt_tokens:
        return "prompt_too_long"
    if not chosen.text.strip() or not rejected.text.strip():
        return "empty"
    if drop_truncated and (chosen.finish_reason == "length" or rejected.finish_reason == "length"):
        return "truncated"
    if chosen.text.strip() == rejected.text.strip():
        return "identical"
    return None


def count_tokens(backend, text: str) -> int:
    tok = getattr(backend, "tokenizer", None)
    if tok is not None:
        return len(tok(text, add_special_tokens=False).input_ids)
    return len(text) // 4 + 1  # remote backends: a rough estimate (about 4 characters a token)


# -- core --------------------------------------------------------------------------------------

def make_pairs(c: Constitution, prompts: list[Prompt], teacher, student, sampling: SamplingParams,
               reasoning_prefill: bool = False, max_prompt_tokens: int = 512,
               drop_truncated: bool = True, teacher_prompt: str = "full", voice_examples: bool = True,
               guidance: float = 1.0, best_of: int = 1, persona_filter: bool = False,
               scorer=None) -> tuple[list[PreferencePair], list[FilteredItem]]:
    """Answer `prompts` with both models and return (pairs, filtered). No I/O.

    `scorer(prompts, answers) -> persona scores` (persona.persona_scores with the reference model bound)
    scores every answer that passed the filters when given; it is needed for `best_of` > 1 (the teacher
    samples that many answers and the highest-scoring one of those that pass the filters is kept) and for
    `persona_filter` (a pair whose chosen answer does not score above its rejected one is dropped as
    `not_more_in_character`). `guidance` != 1
    samples the teacher with classifier-free guidance against the bare prompt (local teachers)."""
    if (best_of > 1 or persona_filter) and scorer is None:
        raise ValueError("best_of and persona_filter need a persona scorer (a reference model with log-probabilities)")
    prefill = reasoning_prefill and teacher.supports_prefill
    t_convs = [teacher_conversation(c, p.text, prefill, teacher_prompt, voice_examples) for p in prompts]
    t_params = sampling.model_copy(update={"n": best_of})
    if guidance != 1.0:
        if not getattr(teacher, "supports_guidance", False):
            raise ValueError(f"distill.guidance={guidance}: teacher {teacher.name!r} cannot guide its sampling; "
                             "use a local teacher (embedded or hf/...) or set guidance: 1")
        t_out = teacher.generate(t_convs, t_params, negatives=[student_conversation(p.text) for p in prompts],
                                 guidance=guidance)
    else:
        t_out = teacher.generate(t_convs, t_params)
    s_out = student.generate([student_conversation(p.text) for p in prompts], sampling)
    pairs, filtered = [], []
    rows = []  # (prompt, candidates that pass the filters, rejected) for the prompts still in play
    for p, t, s in zip(prompts, t_out, s_out):
        errors = [x.error or "request failed" for x in (*t, s[0]) if x.finish_reason == "error"]
        if errors:  # not a filter: the request failed after its retries, and a rerun asks again
            filtered.append(FilteredItem(id=p.id, reason=f"{REQUEST_FAILED}: {errors[0]}"[:300]))
            continue
        if prefill:
            t = [x.model_copy(update={"text": strip_reasoning(x.text)}) for x in t if strip_reasoning(x.text) is not None]
            if not t:
                filtered.append(FilteredItem(id=p.id, reason="no_reasoning_end"))
                continue
        n_tokens = count_tokens(student, p.text)
        reasons = [filter_reason(n_tokens, max_prompt_tokens, x, s[0], drop_truncated) for x in t]
        if all(reasons):  # no candidate passes: the first one's reason is the pair's
            filtered.append(FilteredItem(id=p.id, reason=reasons[0]))
            continue
        rows.append((p, [x for x, r in zip(t, reasons) if r is None], s[0]))
    scores: list[list[float | None]] = [[None] * (len(t) + 1) for _, t, _ in rows]
    if scorer is not None and rows:  # every remaining candidate and rejected answer, in one batched call
        flat = [(i, j, x.text) for i, (_, t, r) in enumerate(rows) for j, x in enumerate([*t, r])]
        for (i, j, _), v in zip(flat, scorer([rows[i][0].text for i, _, _ in flat], [x for _, _, x in flat])):
            scores[i][j] = v
    for (p, t, rejected), sc in zip(rows, scores):
        k = best_of_index(sc[:-1]) if scorer is not None else 0
        if persona_filter and not sc[k] > sc[-1]:
            filtered.append(FilteredItem(id=p.id, reason="not_more_in_character"))
            continue
        pairs.append(PreferencePair(id=p.id, prompt=p.text, chosen=t[k].text, rejected=rejected.text, trait=p.trait,
                                    source=p.source, constitution=c.name, teacher_model=teacher.name,
                                    student_model=student.name, sampling=sampling, persona_chosen=sc[k],
                                    persona_rejected=sc[-1], candidate_scores=sc[:-1] if best_of > 1 else None))
    return pairs, filtered


def reason_counts(filtered: list[FilteredItem]) -> dict[str, int]:
    return {r: sum(f.reason == r for f in filtered) for r in sorted({f.reason for f in filtered})}


def is_heldout(pair_id: str, share: float) -> bool:
    """Deterministic split by id, so resume and reruns keep the same held-out pairs."""
    return int(pair_id[:8], 16) / 0xFFFFFFFF < share


def split(pairs: list[PreferencePair], share: float) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(training, held-out) as recorded with each pair when it was made; `share` only decides for
    pairs written before the split was recorded."""
    held = [p.heldout if p.heldout is not None else is_heldout(p.id, share) for p in pairs]
    return [p for p, h in zip(pairs, held) if not h], [p for p, h in zip(pairs, held) if h]


# -- exporters ---------------------------------------------------------------------------------

def to_trl(pair: PreferencePair) -> dict:
    """TRL's conversational preference format (no system prompt: the student learns the voice bare)."""
    return {"prompt": [{"role": "user", "content": pair.prompt}],
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}]}


def to_openai_sft(pair: PreferencePair) -> dict:
    """OpenAI / Together chat fine-tuning JSONL row (the chosen answer)."""
    return {"messages": [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": pair.chosen}]}


def to_openai_dpo(pair: PreferencePair) -> dict:
    """OpenAI preference fine-tuning JSONL row."""
    return {"input": {"messages": [{"role": "user", "content": pair.prompt}]},
            "preferred_output": [{"role": "assistant", "content": pair.chosen}],
            "non_preferred_output": [{"role": "assistant", "content": pair.rejected}]}


def from_trl(row: dict) -> tuple[str, str, str]:
    return row["prompt"][-1]["content"], row["chosen"][-1]["content"], row["rejected"][-1]["content"]


EXPORTERS = {"trl": to_trl, "openai-sft": to_openai_sft, "openai-dpo": to_openai_dpo, "together": to_openai_sft}


# -- stage -------------------------------------------------------------------------------------

def run(cfg, run_dir: Path) -> StageStatus:

    stage = run_dir / "distill"
    prompts = read_jsonl(run_dir / "prompts" / "prompts.jsonl", Prompt)
    pairs_path, filtered_path = stage / "pairs.jsonl", stage / "filtered.jsonl"
    done_ids = {p.id for p in read_jsonl(pairs_path, PreferencePair)}
    filtered = read_jsonl(filtered_path, FilteredItem)
    done_ids |= {f.id for f in filtered}
    status = start_status(stage, "distill", len(prompts))
    c = C.load(cfg.constitution)
    teacher = get_backend(cfg.models.teacher, **cfg.models.options.get(cfg.models.teacher, {}))
    student = get_backend(cfg.models.student, **cfg.models.options.get(cfg.models.student, {}))
    d = cfg.distill
    try:  # persona scores under the student (the base model): always for local models, else on demand
        scorer = scorer_for(student, cfg.models.student, c, d.best_of > 1 or d.persona_filter)
    except ValueError as e:
        raise ValidationError(f"distill.best_of={d.best_of}, persona_filter={d.persona_filter}: {e}") from None
    bs = cfg.distill.batch_size
    batches = [prompts[i:i + bs] for i in range(0, len(prompts), bs)]
    bar = tqdm(total=len(prompts), desc="distill", unit="prompt", initial=len(done_ids & {p.id for p in prompts}))
    n_pairs = len(done_ids) - len(filtered)
    failed: dict[str, str] = {}  # prompt id -> why its request failed (not saved: the next run asks again)
    with JsonlWriter(pairs_path) as pw, JsonlWriter(filtered_path) as fw:
        for b, batch in enumerate(batches):
            if all(p.id in done_ids for p in batch):
                continue
            sampling = cfg.distill.sampling.model_copy(update={"seed": cfg.seed * 100003 + b})
            pairs, dropped = make_pairs(c, batch, teacher, student, sampling, d.reasoning_prefill,
                                        cfg.prompts.max_prompt_tokens, d.drop_truncated, d.teacher_prompt,
                                        d.voice_examples, d.guidance, d.best_of, d.persona_filter, scorer)
            for p in pairs:
                if p.id not in done_ids:
                    pw.write(p.model_copy(update={"heldout": is_heldout(p.id, cfg.distill.heldout)}))
                    done_ids.add(p.id)
                    n_pairs += 1
            for f in dropped:
                if f.reason.startswith(REQUEST_FAILED):
                    failed[f.id] = f.reason
                elif f.id not in done_ids:
                    fw.write(f)
                    filtered.append(f)
                    done_ids.add(f.id)
            bar.update(len(batch))
            status.done, status.failed = n_pairs, len(failed)
            status.filtered = reason_counts(filtered)
            write_status(stage, status)
    bar.close()
    pairs = read_jsonl(pairs_path, PreferencePair)
    status.done = len(pairs)
    status.filtered = reason_counts(filtered)
    status.counts = {"heldout": len(split(pairs, cfg.distill.heldout)[1])}
    if failed:
        write_status(stage, status)
        raise GenerationError(f"distill: {len(failed)} of {len(prompts)} prompts failed after retries "
                              f"({next(iter(failed.values()))}); the rest are saved; run again to retry them")
    status.state, status.finished = "done", time.time()
    write_status(stage, status)
    return status
