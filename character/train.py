"""Stages `dpo` and `sft`: hand the data to a training backend and record the checkpoint.

    character train dpo RECIPE   -> runs/<run>/dpo/adapter/, metrics.jsonl, checkpoint.json, status.json
    character train sft RECIPE   -> runs/<run>/sft/adapter/, ...   (trained on base + DPO merged)
After DPO, held-out pairs (never trained on) give the reward accuracy and margin, and the mean
per-token log-prob of their chosen answers with no system prompt under base vs trained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .errors import CharacterError
from .inference import parse_spec
from .types import Checkpoint, PreferencePair, SFTExample

SATURATED = 0.98


def student_path(spec: str) -> str:
    provider, model = parse_spec(spec)
    if provider == "embedded":
        from .inference.embedded import embedded_model_path
        return str(embedded_model_path())
    if provider == "hf":
        return model
    raise CharacterError(f"models.student={spec!r}: local training needs an embedded or hf/<id-or-path> student; "
                         "remote models train with dpo.backend: tinker")


def _metrics_logger(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a", encoding="utf-8")

    def log(step: int, row: dict) -> None:
        f.write(json.dumps({"step": step, "time": time.time(), **row}) + "\n")
        f.flush()
    return log, f


def saturation_warning(history: list[dict]) -> str | None:
    accs = [h["rewards/accuracies"] for h in history if "rewards/accuracies" in h]
    tail = accs[-max(3, len(accs) // 4):]
    if len(accs) >= 3 and min(tail) >= SATURATED:
        return (f"DPO reward accuracy saturated at {min(tail):.2f} over the last {len(tail)} steps: the pairs may be "
                "too easy to tell apart (check the held-out numbers, lower lr or epochs, or add harder prompts)")
    return None


def run(cfg, run_dir: Path, kind: str) -> dict:
    from .config import config_hash
    from .distill import is_heldout
    from .runs import read_jsonl, start_status, write_json, write_status
    from .training import get_trainer

    stage = run_dir / kind
    tcfg = getattr(cfg, kind)
    status = start_status(stage, kind, None, config_hash(tcfg))
    (stage / "metrics.jsonl").unlink(missing_ok=True)  # training restarts from the beginning
    log, handle = _metrics_logger(stage / "metrics.jsonl")
    trainer = get_trainer(tcfg.backend)
    base = student_path(cfg.models.student)
    try:
        if kind == "dpo":
            pairs = read_jsonl(run_dir / "distill" / "pairs.jsonl", PreferencePair)
            train = [p for p in pairs if not is_heldout(p.id, cfg.distill.heldout)]
            held = [p for p in pairs if is_heldout(p.id, cfg.distill.heldout)]
            if not train:
                raise CharacterError(f"run={run_dir.name!r}: no training pairs; run distill (or raise prompts.total)")
            result = trainer.train_dpo(train, base, tcfg, stage, log)
            counts = {"train_pairs": len(train), "heldout_pairs": len(held)}
            from .training.trl import preference_metrics
            result.update(preference_metrics(base, str(stage / "adapter"), held, tcfg.beta))
            init = []
        else:
            examples = read_jsonl(run_dir / "introspect" / "sft.jsonl", SFTExample)
            if cfg.introspect.include_thinking and (run_dir / "introspect" / "thinking.jsonl").exists():
                from .introspect import thinking_as_sft
                from .types import IntrospectionExample
                examples += [thinking_as_sft(e) for e in read_jsonl(run_dir / "introspect" / "thinking.jsonl",
                                                                     IntrospectionExample)]
            if not examples:
                raise CharacterError(f"run={run_dir.name!r}: no SFT examples; run introspect first")
            init = [str(run_dir / "dpo" / "adapter")] if (run_dir / "dpo" / "adapter").exists() else []
            result = trainer.train_sft(examples, base, tcfg, stage, log, init_adapters=init)
            counts = {"sft_examples": len(examples)}
    finally:
        handle.close()
    history = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    warning = saturation_warning(history) if kind == "dpo" else None
    if warning:
        result["warning"] = warning
    ck = Checkpoint(kind=kind, path=str(stage / "adapter"), base_model=cfg.models.student, constitution=cfg.constitution,
                    data_counts=counts, hyperparameters={**tcfg.model_dump(), "trained_on": init or ["base"]},
                    metrics={k: float(v) for k, v in result.items() if isinstance(v, (int, float))})
    write_json(stage / "checkpoint.json", ck.model_dump())
    from .report import plot_training
    plot_training(run_dir, kind)
    status = status.model_copy(update={"state": "done", "done": result.get("steps", 0), "counts": counts,
                                       "warning": warning, "finished": time.time()})
    write_status(stage, status)
    return result
