"""What a run folder holds, read back: the stages' states and counts, checkpoint metrics, the persona score
of the pairs, training curves, and the terminal summary `character run` prints at the end. Nothing is
recomputed; report.py builds the report card from these and the evaluation log.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .runs import read_checkpoint, read_jsonl, read_status, runs_root, shown_state
from .types import PreferencePair

STAGE_FILES = {"prompts": "prompts.jsonl", "distill": "pairs.jsonl", "dpo": "adapter", "introspect": "sft.jsonl",
               "sft": "adapter", "merge": "model"}


def checkpoint_metrics(rdir: Path, kind: str) -> dict[str, float]:
    ck = read_checkpoint(rdir / kind)
    return ck.metrics if ck else {}


def metric_history(rdir: Path, kind: str) -> list[dict]:
    p = rdir / kind / "metrics.jsonl"
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a blank line, or the last one cut short by a killed trainer
            continue
    return rows


def list_runs() -> list[dict]:
    """Every run folder: name, stages done, whether it has a merged model, an evaluation, a report."""
    root = runs_root()
    out = []
    for rdir in sorted(p for p in root.glob("*") if p.is_dir()) if root.exists() else []:
        done = [s for s in STAGE_FILES if (st := read_status(rdir / s)) and st.state == "done"]
        out.append({"run": rdir.name, "stages done": ", ".join(done), "merged": (rdir / "merge" / "model").exists(),
                    "evaluated": (rdir / "eval" / "summary.json").exists(),
                    "report": (rdir / "report.html").exists()})
    return out


def stage_rows(rdir: Path) -> list[dict]:
    """One row per pipeline stage (and eval): state, rows done/total, seconds, error, warning."""
    rows = []
    for stage in [*STAGE_FILES, "eval"]:
        st = read_status(rdir / stage)
        if not st:
            rows.append({"stage": stage, "state": "-", "done": 0, "total": None, "seconds": None, "note": ""})
            continue
        state = shown_state(rdir, st)
        end = st.finished or (time.time() if state == "running" else None)
        rows.append({"stage": stage, "state": state, "done": st.done, "total": st.total,
                     "seconds": round(end - st.started) if end and st.started else None,
                     "note": st.error or st.warning or ""})
    return rows


def checkpoints(rdir: Path) -> list[dict]:
    """The run's adapters and merged model with their metadata and metrics."""
    out = []
    for kind, folder in (("dpo", "dpo/adapter"), ("sft", "sft/adapter"), ("merged", "merge/model")):
        path = rdir / folder
        if not path.exists():
            continue
        ck = read_checkpoint(rdir / kind)  # the merged model has none: its settings are the recipe's merge
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        out.append({"kind": kind, "path": str(path), "MB": round(size / 2**20, 1),
                    "created": ck.created if ck else None, "metrics": ck.metrics if ck else {},
                    "hyperparameters": ck.hyperparameters if ck else {}})
    return out


def persona_of_pairs(rdir: Path) -> dict | None:
    """Mean persona scores of a run's preference pairs (chosen = teacher, rejected = student), where recorded."""
    path = rdir / "distill" / "pairs.jsonl"
    pairs = [p for p in (read_jsonl(path, PreferencePair) if path.exists() else []) if p.persona_chosen is not None]
    if not pairs:
        return None
    n = len(pairs)
    return {"n": n, "chosen": sum(p.persona_chosen for p in pairs) / n,
            "rejected": sum(p.persona_rejected for p in pairs) / n,
            "above": sum(p.persona_chosen > p.persona_rejected for p in pairs) / n}


def _stage_extra(st) -> str:
    """Filtered and counted rows and failures of a stage, as the summary line's tail."""
    extra = ""
    if st.filtered:
        extra += "  filtered " + ", ".join(f"{k}={v}" for k, v in st.filtered.items())
    if st.counts:
        extra += "  " + ", ".join(f"{k}={v}" for k, v in st.counts.items())
    if st.failed:
        extra += f"  failed={st.failed}"
    return extra


def _stage_lines(rdir: Path, stage: str, out: str, timings: dict) -> list[str]:
    """A stage's summary line, then its error, warning and training curves where there are any."""
    st = read_status(rdir / stage)
    if not st:
        return [f"{stage:11} {'-':11} {'':>6}  {'':>6}"]
    secs = timings.get(stage)
    secs = secs if secs is not None else ((st.finished or 0) - (st.started or 0) if st.finished else None)
    lines = [(f"{stage:11} {shown_state(rdir, st):11} {st.done:>6}  {(f'{secs:.0f}s' if secs else ''):>6}  "
              f"{rdir / stage / out}{_stage_extra(st)}")]
    if st.error:
        lines.append(f"{'':11} error: {st.error}")
    if st.warning:
        lines.append(f"{'':11} warning: {st.warning}")
    if (rdir / stage / "curves.png").exists():
        lines.append(f"{'':11} curves: {rdir / stage / 'curves.png'}")
    return lines


def _character_check_lines(rdir: Path) -> list[str]:
    """The persona score of the pairs and the DPO/SFT checkpoint metrics, where recorded."""
    lines = []
    p = persona_of_pairs(rdir)
    if p:
        lines += ["", (f"persona score of the pairs (nats/token the constitution adds, base model): teacher "
                       f"{p['chosen']:+.3f}, student {p['rejected']:+.3f}; teacher above student in "
                       f"{p['above']:.0%} of {p['n']} pairs")]
    m = checkpoint_metrics(rdir, "dpo")
    if m:
        lines += ["", "character check (held-out pairs, no system prompt):"]
        if "reward_accuracy" in m:
            lines.append(f"  DPO reward accuracy {m['reward_accuracy']:.2f}, margin {m['reward_margin']:.3f} "
                         f"on {int(m['heldout_pairs'])} held-out pairs")
            lines.append(f"  mean log-prob per token of in-character answers: base "
                         f"{m['chosen_logp_per_token_base']:.3f} -> trained {m['chosen_logp_per_token_trained']:.3f}")
        lines.append(f"  DPO loss {m.get('loss_first', float('nan')):.3f} -> {m.get('loss_last', float('nan')):.3f}")
    s = checkpoint_metrics(rdir, "sft")
    if s:
        lines.append(f"  SFT loss {s.get('loss_first', float('nan')):.3f} -> {s.get('loss_last', float('nan')):.3f}")
    return lines


def run_summary(rdir: Path, timings: dict | None = None) -> str:
    timings = timings or {}
    lines = [f"run: {rdir}", "", f"{'stage':11} {'state':11} {'rows':>6}  {'time':>6}  output"]
    for stage, out in STAGE_FILES.items():
        lines += _stage_lines(rdir, stage, out, timings)
    lines += _character_check_lines(rdir)
    if (rdir / "merge" / "model").exists():
        lines += ["", f"chat with it:  character chat {rdir.name} --compare base"]
    return "\n".join(lines)


def plot_training(rdir: Path, kind: str) -> Path | None:
    """curves.png beside the adapter: loss, and for DPO the reward margin and accuracy, per step."""
    rows = [r for r in metric_history(rdir, kind) if "loss" in r]
    if not rows:
        return None
    import matplotlib  # heavy: matplotlib (train extra)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ["loss"] + (["rewards/margins", "rewards/accuracies"] if kind == "dpo" else ["mean_token_accuracy"])
    keys = [k for k in keys if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3)
        ax.set_title(f"{kind.upper()} {key}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = rdir / kind / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
