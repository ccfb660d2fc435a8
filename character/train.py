"""Stages `dpo` and `sft`: hand the data to a training backend and record the checkpoint.

    character train dpo RECIPE   -> runs/<run>/dpo/adapter/, metrics.jsonl, checkpoint.json, status.json
    character train sft RECIPE   -> runs/<run>/sft/adapter/, ...   (trained on base + DPO merged)
After DPO, held-out pairs (never trained on) give the reward accuracy and margin, and the mean
per-token log-prob of their chosen answers with no system prompt under base vs trained.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from .distill import split
from .errors import CharacterError
from .inference import parse_spec
from .inference.embedded import embedded_model_path
from .introspect import thinking_as_sft
from .recipe import recipe_of_run
from .runs import read_jsonl, start_status, write_checkpoint, write_json, write_status
from .summary import plot_training
from .training import get_trainer
from .training.together import remote_model
from .types import Checkpoint, IntrospectionExample, PreferencePair, SFTExample

SATURATED = 0.98


def student_path(spec: str, backend: str = "trl") -> str:
    provider, model = parse_spec(spec)
    if backend == "tinker":
        if provider in ("tinker", "hf"):
            return model
        raise CharacterError(f"models.student={spec!r}: the tinker backend trains a model the service offers; "
                             "name it tinker/<base-model>, e.g. tinker/meta-llama/Llama-3.1-8B-Instruct")
    if backend == "together" and provider == "openai":  # sampled at Together, trained there, merged from the Hub
        return model
    if provider == "embedded":
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


def _fit(cfg, run_dir: Path, kind: str, log) -> tuple[dict, dict, list[str]]:
    """The training itself -> (result, data counts, adapters it was trained on top of)."""
    tcfg = getattr(cfg, kind)
    trainer = get_trainer(tcfg.backend)
    base = student_path(cfg.models.student, tcfg.backend)
    if tcfg.backend == "together":
        base = remote_model(cfg.models.student)
    stage = run_dir / kind
    if kind == "dpo":
        pairs = read_jsonl(run_dir / "distill" / "pairs.jsonl", PreferencePair)
        train, held = split(pairs, cfg.distill.heldout)
        if not train:
            raise CharacterError(f"run={run_dir.name!r}: no training pairs; run distill (or raise prompts.total)")
        more = extra_rows(tcfg.extra_data, PreferencePair, "dpo")
        extra = {"heldout": held} if tcfg.backend == "together" else {}  # Together evaluates them itself
        result = trainer.train_dpo(train + more, base, tcfg, stage, log, **extra)
        counts = {"train_pairs": len(train), "heldout_pairs": len(held)}
        return result, {**counts, "extra_pairs": len(more)} if more else counts, []
    examples = read_jsonl(run_dir / "introspect" / "sft.jsonl", SFTExample)
    if cfg.introspect.include_thinking and (run_dir / "introspect" / "thinking.jsonl").exists():
        examples += [thinking_as_sft(e) for e in read_jsonl(run_dir / "introspect" / "thinking.jsonl",
                                                             IntrospectionExample)]
    more = extra_rows(tcfg.extra_data, SFTExample, "sft")
    if not examples and not more:
        raise CharacterError(f"run={run_dir.name!r}: no SFT examples; run introspect first")
    init = [str(run_dir / "dpo" / "adapter")] if (run_dir / "dpo" / "adapter").exists() else []
    result = trainer.train_sft(examples + more, base, tcfg, stage, log, init_adapters=init)
    counts = {"sft_examples": len(examples)}
    return result, {**counts, "extra_examples": len(more)} if more else counts, init


def extra_rows(paths: list[str], record_type, kind: str) -> list:
    """The rows of a training stage's `extra_data` files (a behaviour evaluation's data, or any file in
    the same format); a missing or malformed file fails with one line before training starts."""
    rows = []
    for i, path in enumerate(paths):
        if not Path(path).is_file():
            raise CharacterError(f"{kind}.extra_data[{i}]={path!r}: no such file; give a JSONL of "
                                 f"{record_type.__name__} rows (e.g. a behaviour evaluation's data/ file)")
        got = read_jsonl(Path(path), record_type)
        if not got:
            raise CharacterError(f"{kind}.extra_data[{i}]={path!r}: holds no rows; remove it or make the data first")
        rows += got
    return rows


def accelerate_config(strategy: str) -> Path:
    """The shipped accelerate config for ddp, fsdp or zero3 (cpu: several CPU processes, gloo)."""
    return Path(str(resources.files("character").joinpath(f"data/accelerate/{strategy}.yaml")))


def _launch(cfg, run_dir: Path, kind: str) -> tuple[dict, dict, list[str]]:
    """Run `_fit` under `accelerate launch` on num_processes GPUs; rank 0 writes result.json."""
    tcfg = getattr(cfg, kind)
    if not shutil.which("accelerate") and not (Path(sys.executable).parent / "accelerate").exists():
        raise CharacterError(f"{kind}.num_processes={tcfg.num_processes}: needs accelerate; run: pip install -e '.[train]'")
    exe = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    out = run_dir / kind / "result.json"
    out.unlink(missing_ok=True)
    import torch
    if torch.cuda.is_available():
        cmd = [exe, "launch", "--config_file", str(accelerate_config(tcfg.distributed)),
               "--num_processes", str(tcfg.num_processes), "-m", "character.train", str(run_dir), kind]
    else:  # several CPU processes over gloo: accelerate's MULTI_CPU launcher wants MPI, torchrun does not
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(tcfg.num_processes), "-m", "character.train", str(run_dir), kind]
    if subprocess.run(cmd).returncode != 0 or not out.exists():
        raise CharacterError(f"{kind}: the {tcfg.num_processes}-process training failed; see the log above "
                             f"(command: {' '.join(cmd)})")
    data = json.loads(out.read_text())
    return data["result"], data["counts"], data["init"]


def run(cfg, run_dir: Path, kind: str) -> Checkpoint:
    """Train the `kind` ("dpo" or "sft") adapter of the run; the checkpoint it writes (metrics, counts, settings)."""

    stage = run_dir / kind
    tcfg = getattr(cfg, kind)
    status = start_status(stage, kind, None)
    (stage / "metrics.jsonl").unlink(missing_ok=True)  # training restarts from the beginning
    if tcfg.num_processes > 1 and tcfg.backend == "trl":
        result, counts, init = _launch(cfg, run_dir, kind)
    else:
        log, handle = _metrics_logger(stage / "metrics.jsonl")
        try:
            result, counts, init = _fit(cfg, run_dir, kind, log)
        finally:
            handle.close()
    if kind == "dpo":
        pairs = read_jsonl(run_dir / "distill" / "pairs.jsonl", PreferencePair)
        held = split(pairs, cfg.distill.heldout)[1]
        base = student_path(cfg.models.student, tcfg.backend)
        result.update(get_trainer(tcfg.backend).preference_metrics(base, str(stage / "adapter"), held, tcfg.beta))
    history = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    warning = saturation_warning(history) if kind == "dpo" else None
    if warning:
        result["warning"] = warning
    ck = Checkpoint(kind=kind, path=str(stage / "adapter"), base_model=cfg.models.student, constitution=cfg.constitution,
                    data_counts=counts, hyperparameters={**tcfg.model_dump(), "trained_on": init or ["base"]},
                    metrics={k: float(v) for k, v in result.items() if isinstance(v, (int, float))})
    write_checkpoint(stage, ck)
    plot_training(run_dir, kind)
    status = status.model_copy(update={"state": "done", "done": result.get("steps", 0), "counts": counts,
                                       "warning": warning, "finished": time.time()})
    write_status(stage, status)
    return ck


def _child(run_dir: Path, kind: str) -> None:
    """One process of a multi-GPU stage (started by `_launch` through `accelerate launch`)."""

    cfg = recipe_of_run(run_dir)
    main = os.environ.get("RANK", "0") == "0"
    if main:
        log, handle = _metrics_logger(run_dir / kind / "metrics.jsonl")
    else:
        log, handle = (lambda step, row: None), None
    try:
        result, counts, init = _fit(cfg, run_dir, kind, log)
    finally:
        if handle:
            handle.close()
    if main:
        write_json(run_dir / kind / "result.json", {"result": result, "counts": counts, "init": init})


if __name__ == "__main__":
    _child(Path(sys.argv[1]), sys.argv[2])
