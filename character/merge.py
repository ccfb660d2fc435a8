"""Stage `merge`: combine the DPO and SFT adapters exactly and export.

    character merge RECIPE   -> runs/<run>/merge/adapter/  (one PEFT adapter)
                                runs/<run>/merge/model/    (full merged model + model card)

The result is W0 + w_dpo * dW_dpo + w_sft * dW_sft with dW = scaling * B @ A (scaling = alpha/r,
or alpha/sqrt(r) for rsLoRA). PEFT's add_weighted_adapter("linear") is not this (it mixes the
A's and B's separately, adding cross terms), so we compute it ourselves:
- the merged model adds each weighted delta to the base weights;
- the single adapter stacks the ranks: A = [A1; A2], B = [w1 s1 B1, w2 s2 B2], scaling 1, so
  B @ A equals the weighted sum exactly.
add_weighted_adapter("cat") does the same stacking, but is not used; see the comment in `combine`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import CharacterError
from .runs import read_checkpoint, start_status, write_atomic, write_status
from .train import student_path
from .training.trl import load_base
from .types import Checkpoint, StageStatus

PREFIX = "base_model.model."


def read_adapter(path: str | Path) -> tuple[dict, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(config, {module name: (A, B)}) of a saved PEFT LoRA adapter."""
    path = Path(path)
    cfg_file = path / "adapter_config.json"
    if not cfg_file.exists():
        raise CharacterError(f"adapter={str(path)!r}: no adapter_config.json; give a folder saved by PEFT")
    cfg = json.loads(cfg_file.read_text())
    for key, bad, why in (("use_dora", True, "DoRA"), ("fan_in_fan_out", True, "fan_in_fan_out layers")):
        if cfg.get(key) == bad:
            raise CharacterError(f"adapter={path.name!r}: {why} is not supported by the exact merge; retrain without it")
    if cfg.get("bias", "none") != "none" or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise CharacterError(f"adapter={path.name!r}: bias or per-module rank/alpha patterns are not supported by "
                             "the exact merge; retrain with bias='none' and one rank")
    tensors = load_file(str(path / "adapter_model.safetensors"))
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                name = key.split(marker)[0].removeprefix(PREFIX)
                modules.setdefault(name, {})[part] = t.float()
    return cfg, {m: (ab["lora_A"], ab["lora_B"]) for m, ab in modules.items()}


def scaling(cfg: dict) -> float:
    r, alpha = cfg["r"], cfg["lora_alpha"]
    return alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r


def deltas(path: str | Path) -> dict[str, torch.Tensor]:
    cfg, mods = read_adapter(path)
    s = scaling(cfg)
    return {m: s * (b @ a) for m, (a, b) in mods.items()}


@torch.no_grad()
def merge_into(model, adapters: list[tuple[str | Path, float]]):
    """Add each weighted adapter delta to the model's weights, in place."""
    params = dict(model.named_parameters())
    for path, weight in adapters:
        for name, d in deltas(path).items():
            key = f"{name}.weight"
            if key not in params:
                raise CharacterError(f"adapter={Path(path).name!r}: module {name} is not in this model; "
                                     "was it trained on another base?")
            params[key].add_(weight * d.to(params[key].dtype))
    return model


def combine(adapters: list[tuple[str | Path, float]], out: Path) -> Path:
    """Write one PEFT adapter equal to sum(w_i * dW_i), by stacking ranks."""
    # Checked against add_weighted_adapter(combination_type="cat") in peft 0.21.2 (r=8/alpha=16 + r=4/alpha=32,
    # weights [1, .25], [.7, 1.3], [-.5, .25]): exact (max abs diff <= 2.4e-7) unless the first adapter is rsLoRA:
    # the new config copies use_rslora with r = alpha = 12, so scaling is sqrt(12), not 1 (abs diff up to 6.0, 2.46x);
    # one adapter falls back to "linear" (diff 0.98 with rsLoRA). It also needs the base model loaded; this does not.
    loaded = [(read_adapter(p), w) for p, w in adapters]
    names = sorted({m for (_, mods), _ in loaded for m in mods})
    total_r = sum(cfg["r"] for (cfg, _), _ in loaded)
    tensors = {}
    for name in names:
        a_parts, b_parts = [], []
        shape = next(mods[name] for (_, mods), _ in loaded if name in mods)
        for (cfg, mods), w in loaded:
            r = cfg["r"]
            if name in mods:
                a, b = mods[name]
                a_parts.append(a)
                b_parts.append(w * scaling(cfg) * b)
            else:  # this adapter does not touch the module: a zero block keeps ranks aligned
                a_parts.append(torch.zeros(r, shape[0].shape[1]))
                b_parts.append(torch.zeros(shape[1].shape[0], r))
        tensors[f"{PREFIX}{name}.lora_A.weight"] = torch.cat(a_parts, 0).contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = torch.cat(b_parts, 1).contiguous()
    cfg = dict(loaded[0][0][0])
    cfg.update(r=total_r, lora_alpha=total_r, use_rslora=False, lora_dropout=0.0,
               target_modules=sorted({n.rsplit(".", 1)[-1] for n in names}))
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def model_card(recipe, checkpoints: dict[str, Checkpoint]) -> str:
    lines = [f"# {recipe.name}: {recipe.constitution} character", "",
             f"Base model: `{recipe.models.student}`. Trained with Character Studio (Open Character Training "
             f"recipe): DPO on teacher-vs-student pairs, then SFT on introspection data; adapters merged as "
             f"{recipe.merge.weights[0]} x DPO + {recipe.merge.weights[1]} x SFT.", ""]
    for kind, ck in checkpoints.items():
        lines += [f"## {kind}", "", f"- data: {ck.data_counts}", f"- hyperparameters: {ck.hyperparameters}",
                  f"- metrics: {ck.metrics}", ""]
    lines += ["Load with `AutoModelForCausalLM.from_pretrained(this_folder)`; no system prompt is needed."]
    return "\n".join(lines) + "\n"


def continues_dpo(run_dir: Path) -> bool:
    """True when the SFT adapter was trained on top of the DPO weights (the Tinker and Together backends)."""
    recs = [run_dir / "sft" / name for name in ("tinker.json", "together.json")]
    return any(r.exists() and bool(json.loads(r.read_text()).get("continues_dpo")) for r in recs)


def run(cfg, run_dir: Path) -> StageStatus:
    """Merge the run's adapters into the base: merge/adapter (the combined LoRA) and merge/model (full weights)."""
    stage = run_dir / "merge"
    status = start_status(stage, "merge", 2)
    w_dpo, w_sft = cfg.merge.weights
    parts = [(run_dir / "dpo" / "adapter", w_dpo), (run_dir / "sft" / "adapter", w_sft)]
    if continues_dpo(run_dir):  # the SFT adapter holds DPO + SFT: take the DPO part back out
        parts[0] = (parts[0][0], w_dpo - w_sft)
    parts = [(p, w) for p, w in parts if p.exists() and w != 0]
    if not parts:
        raise CharacterError(f"run={run_dir.name!r}: no adapters to merge; run the dpo and sft stages first")
    combine(parts, stage / "adapter")
    tokenizer, model = load_base(student_path(cfg.models.student, cfg.dpo.backend))
    merge_into(model, parts)
    tokenizer.padding_side = "left"
    model.save_pretrained(stage / "model")
    tokenizer.save_pretrained(stage / "model")
    checkpoints = {k: ck for k in ("dpo", "sft") if (ck := read_checkpoint(run_dir / k))}
    write_atomic(stage / "model" / "README.md", model_card(cfg, checkpoints))
    status = status.model_copy(update={"state": "done", "done": len(parts), "finished": time.time()})
    write_status(stage, status)
    return status
