"""Time estimates before a run: this machine's measured rates (generation, scoring and LoRA training
tokens/s, measured once per model and backend and cached under CHARACTER_HOME/rates/) times the work a
recipe's sizes imply, stage by stage.

The work model is deliberately simple: a stage's tokens (answers generated, answers scored, rows
trained) over the matching rate, times a per-stage factor for what the micro-benchmark does not see
(long cached system prompts, padding, the trainer's own bookkeeping, model loads). The factors were
fitted once on the `make demo` recipe's stage times (benchmarks/RESULTS.md); the estimate's measured
error on a smaller recipe is in its "Time estimates" section (1.9x under for the pipeline: a rough
guide). Remote backends (Tinker, Together, API models) are not estimated: their speed is the provider's.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from pydantic import BaseModel

from . import log
from .errors import CharacterError
from .inference import get_backend
from .runs import character_home, read_record, write_record
from .types import Message, SamplingParams

# seconds of wall time per second of micro-benchmarked work, fitted on the demo recipe (see the docstring)
# (introspection's factor is large: its self-interactions decode turn by turn at a narrow batch)
FACTORS = {"distill": 1.0, "dpo": 0.85, "introspect": 4.8, "sft": 1.5, "eval": 1.55}
LOCAL_BACKENDS = ("trl",)


class Rates(BaseModel):
    model: str
    backend: str
    machine: str
    measured: float
    generate_tps: float  # new tokens/s, batched decoding at the pipeline's batch width
    score_tps: float  # tokens/s read by a no-grad forward pass (persona scores, judges' labels, log-probs)
    train_tps: float  # tokens/s through a LoRA forward + backward + optimizer step
    load_s: float  # seconds to load the model


def machine() -> str:
    """What the rates depend on besides the model: the device and the CPU threads."""
    import torch
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{torch.get_num_threads()}threads:{os.cpu_count()}cores"


def rates_path(model: str, backend: str) -> Path:
    return character_home() / "rates" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', model)}-{backend}.json"


def cached_rates(model: str, backend: str) -> Rates | None:
    """The cached rates for this model and backend on this machine, or None (never measured, or measured on
    another machine)."""
    r = read_record(rates_path(model, backend), Rates)
    return r if r is not None and r.machine == machine() else None


def measure(model: str, backend: str = "trl", progress: bool = True) -> Rates:
    """Measure and cache the rates (under a minute for the embedded model on 2 cores)."""
    if backend not in LOCAL_BACKENDS or not (model == "embedded" or model.startswith("hf/")):
        raise CharacterError(f"model={model!r} backend={backend!r}: only local models on the trl backend are "
                             "measured (a remote provider's speed is its own)")
    import torch
    from peft import LoraConfig, get_peft_model

    from .inference.hf import load_model
    from .training.trl import use_bf16

    say = log.say if progress else (lambda *a, **k: None)
    gen = get_backend(model)  # (a first load may convert the model once; the load time below is a cached one)
    say(f"measuring generation with {model} ...")
    prompts = [[Message(role="user", content=f"Tell me something about {w}.")]
               for w in ["sailing", "bread", "rain", "stars", "maps", "tea", "bees", "snow"] * 8]
    params = SamplingParams(max_tokens=48, temperature=0.7, seed=0)
    gen.generate(prompts[:2], params.model_copy(update={"max_tokens": 4}))  # warm-up
    t = time.time()
    outs = gen.generate(prompts, params)
    generate_tps = sum(o[0].completion_tokens for o in outs) / (time.time() - t)

    say("measuring scoring and LoRA training ...")
    t = time.time()
    tok, net = load_model(gen.path)
    load_s = time.time() - t
    dtype = torch.bfloat16 if use_bf16("auto") else torch.float32
    device = "cuda" if next(net.parameters()).is_cuda else "cpu"
    rows = torch.randint(100, min(len(tok), 20000), (4, 128)).to(net.device)
    with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype == torch.bfloat16):
        net(input_ids=rows[:1, :16])
        t = time.time()
        for _ in range(2):
            net(input_ids=rows)
        score_tps = 2 * rows.numel() / (time.time() - t)
    peft = get_peft_model(net, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)

    def step():
        with torch.autocast(device, dtype=dtype, enabled=dtype == torch.bfloat16):
            loss = peft(input_ids=rows, labels=rows).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    step()  # warm-up
    t = time.time()
    for _ in range(2):
        step()
    train_tps = 2 * rows.numel() / (time.time() - t)
    r = Rates(model=model, backend=backend, machine=machine(), measured=time.time(), generate_tps=generate_tps,
              score_tps=score_tps, train_tps=train_tps, load_s=load_s)
    write_record(rates_path(model, backend), r)
    say(f"generation {generate_tps:.0f} tok/s, scoring {score_tps:.0f} tok/s, training {train_tps:.0f} tok/s "
        f"-> {rates_path(model, backend)}")
    return r


def stage_work(cfg) -> dict[str, dict[str, float]]:
    """Tokens each stage generates, scores and trains, from the recipe's sizes (answers counted at their
    token limit: the embedded model's answers mostly run to it)."""
    d, i, e = cfg.distill, cfg.introspect, cfg.eval
    total = cfg.prompts.total
    prompt = 40  # tokens in a typical user prompt
    answer = d.sampling.max_tokens
    pairs = total * (1 - d.heldout)
    ia = i.sampling.max_tokens
    reflections = i.reflection_prompts * i.samples_per_prompt
    sft_rows = reflections + i.interactions
    sft_tokens = reflections * (prompt + ia) + i.interactions * i.turns * (prompt + ia)
    scored = 4 * total * answer if d.persona_filter else 0  # each answer with and without the constitution
    conditions = len(e.conditions)
    methods = 4  # base, prompted base, trained, trained + prompted
    eval_gen = (methods * e.prompts * (1 + len(e.attacks) + 1) + methods * e.rubric_answers
                + 2 * e.conversations * 2) * e.max_tokens + 2 * e.preference_prompts * conditions * e.max_tokens
    return {
        "prompts": {},
        "distill": {"generate": 2 * total * answer, "score": scored},
        "dpo": {"train": cfg.dpo.epochs * pairs * 2 * (prompt + answer), "score": pairs * 2 * (prompt + answer)},
        "introspect": {"generate": reflections * ia + i.interactions * i.turns * ia},
        "sft": {"train": cfg.sft.epochs * sft_tokens, "rows": sft_rows},
        "merge": {},
        "eval": {"generate": eval_gen, "score": 2 * eval_gen},
    }


def estimate(cfg, rates: Rates | None = None) -> list[dict]:
    """Seconds per stage for a recipe: rows of stage, seconds (None when not estimated) and what it rests on."""
    if cfg.dpo.backend not in LOCAL_BACKENDS:
        return [{"stage": s, "estimate_s": None, "basis": f"{cfg.dpo.backend}: remote, not estimated"}
                for s in stage_work(cfg)]
    rates = rates or cached_rates(cfg.models.student, cfg.dpo.backend)
    if rates is None:
        return [{"stage": s, "estimate_s": None, "basis": "not measured on this machine"} for s in stage_work(cfg)]
    rows = []
    for stage, work in stage_work(cfg).items():
        backend = {"dpo": cfg.dpo.backend, "sft": cfg.sft.backend}.get(stage, "trl")
        if backend not in LOCAL_BACKENDS:
            rows.append({"stage": stage, "estimate_s": None, "basis": f"{backend}: remote, not estimated"})
            continue
        other = {"distill": ("teacher", cfg.models.teacher), "eval": ("judge", cfg.models.judge)}.get(stage)
        if other and other[1] != cfg.models.student:  # only the student's speed is measured
            rows.append({"stage": stage, "estimate_s": None,
                         "basis": f"the {other[0]} ({other[1]}) is not the measured student: not estimated"})
            continue
        seconds = (work.get("generate", 0) / rates.generate_tps + work.get("score", 0) / rates.score_tps
                   + work.get("train", 0) / rates.train_tps)
        loads = {"prompts": 0, "merge": 2, "distill": 2}.get(stage, 1)
        seconds = seconds * FACTORS.get(stage, 1.0) + loads * rates.load_s + 1
        basis = ", ".join(f"{k} {v:,.0f} tokens" for k, v in work.items() if k != "rows") or "file work"
        rows.append({"stage": stage, "estimate_s": round(seconds), "basis": basis})
    return rows


def pipeline_total(rows: list[dict]) -> tuple[int, int, int]:
    """Seconds over the estimated stages from prompts to merge (evaluation is launched on its own), how many
    of those stages were estimated, and how many were not."""
    known = [r["estimate_s"] for r in rows if r["stage"] != "eval" and r["estimate_s"] is not None]
    return sum(known), len(known), sum(1 for r in rows if r["stage"] != "eval") - len(known)


def with_actuals(estimates: list[dict], stage_rows: list[dict]) -> list[dict]:
    """The estimate beside each stage's actual seconds (from the run's records), where it ran."""
    actual = {r["stage"]: r for r in stage_rows}
    return [{**e, "actual_s": actual.get(e["stage"], {}).get("seconds"),
             "state": actual.get(e["stage"], {}).get("state", "-")} for e in estimates]
