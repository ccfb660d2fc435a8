"""Reads a run folder and summarises it. The CLI summary, the studio and the report card read
run files through here; nothing is recomputed.

    character report RUN
"""

from __future__ import annotations

import json
from pathlib import Path

from .runs import read_json, read_status

STAGE_FILES = {"prompts": "prompts.jsonl", "distill": "pairs.jsonl", "dpo": "adapter", "introspect": "sft.jsonl",
               "sft": "adapter", "merge": "model"}


def checkpoint_metrics(rdir: Path, kind: str) -> dict:
    p = rdir / kind / "checkpoint.json"
    return read_json(p).get("metrics", {}) if p.exists() else {}


def metric_history(rdir: Path, kind: str) -> list[dict]:
    p = rdir / kind / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def run_summary(rdir: Path, timings: dict | None = None) -> str:
    timings = timings or {}
    lines = [f"run: {rdir}", "", f"{'stage':11} {'state':8} {'rows':>6}  {'time':>6}  output"]
    for stage, out in STAGE_FILES.items():
        st = read_status(rdir / stage)
        if not st:
            lines.append(f"{stage:11} {'-':8} {'':>6}  {'':>6}")
            continue
        secs = timings.get(stage)
        secs = secs if secs is not None else ((st.finished or 0) - (st.started or 0) if st.finished else None)
        extra = ""
        if st.filtered:
            extra += "  filtered " + ", ".join(f"{k}={v}" for k, v in st.filtered.items())
        if st.counts:
            extra += "  " + ", ".join(f"{k}={v}" for k, v in st.counts.items())
        lines.append(f"{stage:11} {st.state:8} {st.done:>6}  {(f'{secs:.0f}s' if secs else ''):>6}  "
                     f"{rdir / stage / out}{extra}")
        if st.error:
            lines.append(f"{'':11} error: {st.error}")
        if st.warning:
            lines.append(f"{'':11} warning: {st.warning}")
        if (rdir / stage / "curves.png").exists():
            lines.append(f"{'':11} curves: {rdir / stage / 'curves.png'}")
    m = checkpoint_metrics(rdir, "dpo")
    if m:
        lines += ["", "character check (held-out pairs, no system prompt):"]
        if "reward_accuracy" in m:
            lines.append(f"  DPO reward accuracy {m['reward_accuracy']:.2f}, margin {m['reward_margin']:.3f} "
                         f"on {int(m['heldout_pairs'])} held-out pairs")
            lines.append(f"  mean log-prob per token of in-character answers: base {m['chosen_logp_per_token_base']:.3f}"
                         f" -> trained {m['chosen_logp_per_token_trained']:.3f}")
        lines.append(f"  DPO loss {m.get('loss_first', float('nan')):.3f} -> {m.get('loss_last', float('nan')):.3f}")
    s = checkpoint_metrics(rdir, "sft")
    if s:
        lines.append(f"  SFT loss {s.get('loss_first', float('nan')):.3f} -> {s.get('loss_last', float('nan')):.3f}")
    if (rdir / "merge" / "model").exists():
        lines += ["", f"chat with it:  character chat {rdir.name} --compare base"]
    return "\n".join(lines)


def plot_training(rdir: Path, kind: str) -> Path | None:
    """curves.png beside the adapter: loss, and for DPO the reward margin and accuracy, per step."""
    rows = [r for r in metric_history(rdir, kind) if "loss" in r]
    if not rows:
        return None
    import matplotlib
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
