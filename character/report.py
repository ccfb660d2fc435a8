"""Reads run folders and summarises them. The CLI summary, the studio and the report card read
run files through here; nothing is recomputed.

    character report RUN [RUN ...] [--out DIR]

One run: the stage summary on the terminal, and report.html (plotly charts: trait rating changes
with intervals, robustness per method and attack, judge scores, training curves) plus report.md
(the same numbers as tables) in runs/<run>/. Several runs: side by side, in
reports/<run_a>+<run_b>.../ under CHARACTER_HOME unless --out says where.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .runs import read_json, read_status, shown_state

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


def list_runs() -> list[dict]:
    """Every run folder: name, stages done, whether it has a merged model, an evaluation, a report."""
    from .runs import runs_root
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
        meta = read_json(rdir / kind / "checkpoint.json") if (rdir / kind / "checkpoint.json").exists() else {}
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        out.append({"kind": kind, "path": str(path), "MB": round(size / 2**20, 1),
                    "created": meta.get("created"), "metrics": meta.get("metrics", {}),
                    "hyperparameters": meta.get("hyperparameters", {})})
    return out


def persona_of_pairs(rdir: Path) -> dict | None:
    """Mean persona scores of a run's preference pairs (chosen = teacher, rejected = student), where recorded."""
    from .runs import read_jsonl
    from .types import PreferencePair
    path = rdir / "distill" / "pairs.jsonl"
    pairs = [p for p in (read_jsonl(path, PreferencePair) if path.exists() else []) if p.persona_chosen is not None]
    if not pairs:
        return None
    n = len(pairs)
    return {"n": n, "chosen": sum(p.persona_chosen for p in pairs) / n,
            "rejected": sum(p.persona_rejected for p in pairs) / n,
            "above": sum(p.persona_chosen > p.persona_rejected for p in pairs) / n}


def run_summary(rdir: Path, timings: dict | None = None) -> str:
    timings = timings or {}
    lines = [f"run: {rdir}", "", f"{'stage':11} {'state':11} {'rows':>6}  {'time':>6}  output"]
    for stage, out in STAGE_FILES.items():
        st = read_status(rdir / stage)
        if not st:
            lines.append(f"{stage:11} {'-':11} {'':>6}  {'':>6}")
            continue
        secs = timings.get(stage)
        secs = secs if secs is not None else ((st.finished or 0) - (st.started or 0) if st.finished else None)
        extra = ""
        if st.filtered:
            extra += "  filtered " + ", ".join(f"{k}={v}" for k, v in st.filtered.items())
        if st.counts:
            extra += "  " + ", ".join(f"{k}={v}" for k, v in st.counts.items())
        if st.failed:
            extra += f"  failed={st.failed}"
        lines.append(f"{stage:11} {shown_state(rdir, st):11} {st.done:>6}  {(f'{secs:.0f}s' if secs else ''):>6}  "
                     f"{rdir / stage / out}{extra}")
        if st.error:
            lines.append(f"{'':11} error: {st.error}")
        if st.warning:
            lines.append(f"{'':11} warning: {st.warning}")
        if (rdir / stage / "curves.png").exists():
            lines.append(f"{'':11} curves: {rdir / stage / 'curves.png'}")
    p = persona_of_pairs(rdir)
    if p:
        lines += ["", f"persona score of the pairs (nats/token the constitution adds, base model): teacher "
                  f"{p['chosen']:+.3f}, student {p['rejected']:+.3f}; teacher above student in {p['above']:.0%} of "
                  f"{p['n']} pairs"]
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


# ---- the report card ---------------------------------------------------------------------------

def eval_summary(rdir: Path) -> dict:
    """The run's evaluation log (evallog.EvalLog, validated) as the tables and charts read it."""
    from .evallog import as_dict, load
    log = load(rdir / "eval")
    return as_dict(log) if log else {}


def _fmt(v, fmt=".2f") -> str:
    return "n/a" if v is None or v != v else f"{v:{fmt}}"


def _ci(d: dict, key: str, fmt: str = ".2f") -> str:
    return f"{_fmt(d.get(key), fmt)} [{_fmt(d.get('low'), fmt)}, {_fmt(d.get('high'), fmt)}]"


ci = _ci  # value [low, high], "n/a" for what is missing (the studio formats with it too)


def _mover(p: dict, trait: str, delta: float) -> str:
    """'trait +40 (base 980 [930, 1030] -> trained 1020 [975, 1070])'."""
    b, t = p["ratings"]["base"].get(trait, {}), p["ratings"]["trained"].get(trait, {})
    if not b or not t:
        return f"{trait} {delta:+.0f}"
    return (f"{trait} {delta:+.0f} (base {b['rating']:.0f} [{_fmt(b['low'], '.0f')}, {_fmt(b['high'], '.0f')}] -> "
            f"trained {t['rating']:.0f} [{_fmt(t['low'], '.0f')}, {_fmt(t['high'], '.0f')}])")


def _titled(title: str, cals: list, judges: list[str] | None = None) -> str:
    """A judged section's title names its judge and whether its calibration passed."""
    cals = [c for c in cals if c and c.accuracy is not None]
    if not cals:
        return f"{title} - judge not calibrated"
    names = ", ".join(judges or sorted({c.judge for c in cals}))
    passed = sum(c.passed for c in cals)
    if passed == len(cals):
        return f"{title} - judge {names}, calibrated"
    if passed == 0:
        return f"{title} - judge {names}: no signal (failed calibration)"
    return f"{title} - judge {names}: {passed} of {len(cals)} criteria passed calibration"


def report_tables(runs: list[Path]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every section; one column per run. The markdown report and the
    studio read these."""
    names = [r.name for r in runs]
    sums = [eval_summary(r) for r in runs]
    out = []
    rows = [["judge"] + [s.get("judge", "n/a") for s in sums], ["base model"] + [s.get("base", "n/a") for s in sums]]
    for kind in ("dpo", "sft"):
        metrics = [checkpoint_metrics(r, kind) for r in runs]
        rows.append([f"{kind.upper()} loss first -> last"] + [
            f"{_fmt(m.get('loss_first'), '.3f')} -> {_fmt(m.get('loss_last'), '.3f')}" for m in metrics])
    rows.append(["DPO held-out reward accuracy"] + [_fmt(checkpoint_metrics(r, "dpo").get("reward_accuracy"))
                                                     for r in runs])
    out.append(("Runs", ["", *names], rows))
    if any("classifier" in s for s in sums):
        out.append(("Persona classifier (held-out teacher vs student answers)", ["", *names], [
            ["accuracy, linear (95% Wilson interval)"] + [_ci(s.get("classifier", {}), "accuracy") for s in sums],
            ["accuracy, fine-tuned encoder"] + [_ci(s["classifier"]["finetuned"], "accuracy")
                                                if s.get("classifier", {}).get("finetuned") else "n/a" for s in sums],
            ["macro-F1"] + [_fmt(s.get("classifier", {}).get("macro_f1")) for s in sums],
            ["rows"] + [str(s.get("classifier", {}).get("heldout_rows", "n/a")) for s in sums],
            ["confusion (true in/out x predicted in/out)"] + [str(s.get("classifier", {}).get("confusion", "n/a"))
                                                              for s in sums]]))
    if any("likelihood" in s for s in sums):
        rows = [["character likelihood gain (nats/token)"] + [_ci(s["likelihood"], "gain_per_token", "+.3f")
                                                             if "likelihood" in s else "n/a" for s in sums]]
        for kind in ("in_character", "plain"):
            for m in ("base", "trained"):
                rows.append([f"perplexity, held-out {kind} answers, {m}"] + [
                    _fmt(s["likelihood"]["perplexity"][kind][m]["perplexity"]) if "likelihood" in s else "n/a"
                    for s in sums])
        out.append(("Likelihood (no judge)", ["", *names], rows))
    if any(s.get("retention", {}).get("methods") for s in sums):
        rows = []
        for m in ("base", "prompted", "trained"):
            for mode in ("strict", "loose"):
                rows.append([f"{m}, {mode}"] + [_ci(s["retention"]["methods"][m][mode], "accuracy")
                                                if s.get("retention", {}).get("methods") else "n/a" for s in sums])
        for mode in ("strict", "loose"):
            rows.append([f"trained minus base, {mode}"] + [
                _ci(s["retention"][f"trained_minus_base_{mode}"], "difference", "+.2f")
                if s.get("retention", {}).get("methods") else "n/a" for s in sums])
        rows.append(["prompts"] + [str(s.get("retention", {}).get("prompts", "n/a")) for s in sums])
        out.append(("Capability retention: instruction following with checkable constraints (IFEval checkers, "
                    "no judge)", ["", *names], rows))
    if any("robustness" in s for s in sums):
        keys = sorted({k for s in sums for k in s.get("robustness", {})},
                      key=lambda k: (k.split("|")[0], k.split("|")[1] != "none", k))
        from .evaluate import min_detectable_difference, robustness_warning
        warn = [robustness_warning(s.get("classifier")) for s in sums]
        mde = [f"{min_detectable_difference(s['robustness']['trained|none']['n']):.2f} "
               f"(n={s['robustness']['trained|none']['n']} per method)"
               if "trained|none" in s.get("robustness", {}) else "n/a" for s in sums]
        out.append(("Robustness: share of answers called in character (95% interval; trained-base rows: trained "
                    "minus base on the same prompts)", ["method / attack", *names],
                    ([["classifier check"] + [w or "held-out accuracy at least 0.8" for w in warn],
                      ["minimum detectable difference, trained vs base (80% power, 5% level)"] + mde]) + [
                     [k.replace("|", " / ")] + [_ci(s["robustness"][k], "in_character",
                                                    "+.2f" if k.startswith("trained-base") else ".2f")
                                                if k in s.get("robustness", {}) else "n/a"
                                                for s in sums] for k in keys]))
        if any(v.get("persona") is not None for s in sums for v in s.get("robustness", {}).values()):
            from .evaluate import _ci_persona
            out.append(("Persona score: how much the constitution explains each answer, under the base model "
                        "(judge-free, mean nats/token, 95% interval; above 0 = in character)", ["method / attack", *names],
                        [[k.replace("|", " / ")] + [_ci_persona(s["robustness"][k]) if k in s.get("robustness", {})
                                                    else "n/a" for s in sums] for k in keys]))
    if any("preferences" in s for s in sums):
        from .judges import calibration_of, judged
        cals = [calibration_of(s["preferences"]) if "preferences" in s else None for s in sums]
        rows = [["judge"] + [s["preferences"]["judge"] if "preferences" in s else "n/a" for s in sums],
                ["judge calibration (known trait answers)"] + [c.headline if c else "n/a" for c in cals]]
        for label, fn in (
                ("matches (base / trained)", lambda p: f"{p['matches'].get('base')} / {p['matches'].get('trained')}"),
                ("judge failures (base / trained)", lambda p: f"{p['judge_failures'].get('base')} / "
                                                              f"{p['judge_failures'].get('trained')}"),
                ("answers judged 'neither'", lambda p: f"{p['neither'].get('base')} / {p['neither'].get('trained')}"),
                ("judge's first-slot share (0.5 = no position bias)", lambda p: _fmt(p.get("judge_position_bias")))):
            rows.append([label] + [fn(s["preferences"]) if "preferences" in s else "n/a" for s in sums])
        for label, fn in (
                ("traits with enough matches (base and trained)",
                 lambda p: f"{p['movers'].get('eligible', 'n/a')} of {p['movers'].get('rated', 'n/a')} "
                           f"(minimum {p['movers'].get('min_matches', 1)})"),
                ("rose most", lambda p: ", ".join(_mover(p, t, d) for t, d in p["movers"]["up"]) or "none"),
                ("fell most", lambda p: ", ".join(_mover(p, t, d) for t, d in p["movers"]["down"]) or "none"),
                ("constitution's trait words", lambda p: ", ".join(p["constitution_traits"]["words"]) or "none"),
                ("their mean rating change", lambda p: _fmt(p["constitution_traits"]["mean_delta"], "+.0f"))):
            rows.append([label] + [judged(c, fn(s["preferences"])) if c else "n/a" for s, c in zip(sums, cals)])
        out.append((_titled("Revealed trait preferences (Bradley-Terry, 1000 = average)", cals), ["", *names], rows))
    if any("judges" in s for s in sums):
        from .judges import calibration_of, judged
        rows = []
        crit = {"coherence": "coherence", "pairwise": "character"}
        all_cals = []
        for c in ("character", "coherence", "rubric", "persona_consistency", "helpfulness", "safety"):
            cals = [calibration_of(s["judges"], c) if "judges" in s else None for s in sums]
            all_cals += cals
            rows.append([f"calibration: {c}"] + [x.headline if x else "n/a" for x in cals])
        for key in ("coherence", "pairwise"):
            rows.append([f"{key}: trained win rate vs {sums[0].get('judges', {}).get(key, {}).get('opponent', '')}"] + [
                judged(calibration_of(s["judges"], crit[key]),
                       _ci(s["judges"][key], "win_rate") + f" W{s['judges'][key]['wins']}/L{s['judges'][key]['losses']}/"
                       f"T{s['judges'][key]['ties']}, {s['judges'][key]['failures']} failed")
                if "judges" in s else "n/a" for s in sums])
        for m in ("base", "trained"):
            rows.append([f"trait rubric mean (1-5), {m}"] + [
                judged(calibration_of(s["judges"], "rubric"),
                       f"{_fmt(s['judges']['rubric'][m]['mean'])} ({s['judges']['rubric'][m]['failures']} failed)")
                if "judges" in s else "n/a" for s in sums])
        for m in ("base", "trained"):
            for ev in ("persona_consistency", "helpfulness", "safety"):
                rows.append([f"{ev} (1-5), {m}"] + [
                    judged(calibration_of(s["judges"], ev),
                           _fmt(s["judges"]["evaluators"][m]["per_evaluator"].get(ev, {}).get("mean")))
                    if "judges" in s else "n/a" for s in sums])
        out.append((_titled("LLM judges", [c for c in all_cals if c]), ["", *names], rows))
    out += behavior_tables(runs)
    return out


def behavior_tables(runs: list[Path]) -> list[tuple[str, list[str], list[list[str]]]]:
    """One table per behaviour evaluation that had one of these runs' trained model as a target: every
    target of it (e.g. trained, base, prompted base) on the same scenarios, gated by the judge's calibration."""
    from .behaviors import summaries_for_run
    from .judges import Calibration, judged
    out, seen = [], set()
    for r in runs:
        for s in summaries_for_run(r.name):
            if s["name"] in seen:
                continue
            seen.add(s["name"])
            cal = Calibration.model_validate(s["calibration"])
            rows = [[name, t["model"] + (" + persona" if t["persona"] else ""), str(t["n"]),
                     judged(cal, f"{t['presence']:.1f} [{t['presence_low']:.1f}, {t['presence_high']:.1f}]"),
                     judged(cal, f"{t['elicitation']:.2f} [{t['elicitation_low']:.2f}, {t['elicitation_high']:.2f}]")]
                    for name, t in s["targets"].items()]
            out.append((f"Behaviour: {s['name']} ({s['behavior'][:90]}); judge {cal.headline}",
                        ["target", "model", "transcripts", "presence 1-10 (95% CI)",
                         f"elicited, > {s['threshold']:g} (95% CI)"], rows))
    return out


def _markdown(tables, runs: list[Path]) -> str:
    lines = ["# Report card: " + ", ".join(r.name for r in runs), "",
             "Read from the run folders (`character eval run` made the numbers). Intervals are 95% bootstrap "
             "percentile intervals; judge calibration intervals are Wilson 95% intervals. Each judged section "
             "names its judge and how it did on known pairs from the run's own data; a criterion whose "
             "calibration did not clear chance is shown as \"no signal\", never as a result.", ""]
    for title, header, rows in tables:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def report_figures(runs: list[Path]) -> list[tuple[str, object]]:
    """Plotly figures: trait rating deltas, robustness, judges, training curves."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        from .errors import MissingDependencyError
        raise MissingDependencyError("report.html needs plotly; run: pip install -e '.[studio]'") from None
    from .judges import calibration_of
    figs = []
    multi = len(runs) > 1
    sums = [(r.name, eval_summary(r)) for r in runs]

    fig = go.Figure()
    for name, s in sums:
        p = s.get("preferences")
        if not p or not calibration_of(p).passed:  # a judge that failed calibration draws nothing
            continue
        movers = [t for t, _ in p["movers"]["up"]] + [t for t, _ in p["movers"]["down"]][::-1]
        movers = list(dict.fromkeys(movers + p["constitution_traits"]["words"]))
        movers = [t for t in movers if t in p["ratings"]["base"] and t in p["ratings"]["trained"]]
        for m, color in (("base", "#888"), ("trained", "#c0392b")):
            rt = p["ratings"][m]
            fig.add_trace(go.Scatter(
                x=[rt[t]["rating"] for t in movers], y=movers, mode="markers", name=f"{name}: {m}" if multi else m,
                marker={"color": color, "size": 9},
                error_x={"type": "data", "symmetric": False,
                         "array": [rt[t]["high"] - rt[t]["rating"] for t in movers],
                         "arrayminus": [rt[t]["rating"] - rt[t]["low"] for t in movers]}))
    if fig.data:
        fig.update_layout(title="Trait ratings: biggest movers and the constitution's own trait words "
                                "(Bradley-Terry, 95% intervals)", xaxis_title="rating (1000 = average trait)",
                          height=500)
        figs.append(("preferences", fig))

    fig = go.Figure()
    for name, s in sums:
        rob = s.get("robustness")
        if not rob:
            continue
        attacks = sorted({k.split("|")[1] for k in rob}, key=lambda a: (a != "none", a))
        for method in ("base", "prompted", "trained", "trained+prompted"):
            vals = [rob.get(f"{method}|{a}") for a in attacks]
            fig.add_trace(go.Bar(
                x=attacks, y=[v["in_character"] for v in vals], name=f"{name}: {method}" if multi else method,
                error_y={"type": "data", "symmetric": False, "array": [v["high"] - v["in_character"] for v in vals],
                         "arrayminus": [v["in_character"] - v["low"] for v in vals]}))
    if fig.data:
        fig.update_layout(barmode="group", title="Robustness: share called in character, per method and attack",
                          yaxis={"range": [0, 1.05], "title": "in-character share"}, height=420)
        figs.append(("robustness", fig))

    fig = go.Figure()
    for name, s in sums:
        rob = s.get("robustness") or {}
        attacks = sorted({k.split("|")[1] for k in rob}, key=lambda a: (a != "none", a))
        for method in ("base", "prompted", "trained", "trained+prompted"):
            vals = [rob.get(f"{method}|{a}") or {} for a in attacks]
            if any(v.get("persona") is None for v in vals):
                continue
            fig.add_trace(go.Bar(
                x=attacks, y=[v["persona"] for v in vals], name=f"{name}: {method}" if multi else method,
                error_y={"type": "data", "symmetric": False, "array": [v["persona_high"] - v["persona"] for v in vals],
                         "arrayminus": [v["persona"] - v["persona_low"] for v in vals]}))
    if fig.data:
        fig.update_layout(barmode="group", title="Persona score (judge-free): nats/token the constitution adds to "
                          "each answer under the base model", yaxis={"title": "persona score"}, height=420)
        figs.append(("persona", fig))

    fig = go.Figure()
    for name, s in sums:
        j = s.get("judges")
        if not j:
            continue
        keys = [k for k, c in (("coherence", "coherence"), ("pairwise", "character")) if calibration_of(j, c).passed]
        if keys:
            vals = [j[k] for k in keys]
            fig.add_trace(go.Bar(x=[f"win rate vs {j[k]['opponent']} ({k})" for k in keys],
                                 y=[v["win_rate"] for v in vals], name=name,
                                 error_y={"type": "data", "symmetric": False,
                                          "array": [v["high"] - v["win_rate"] for v in vals],
                                          "arrayminus": [v["win_rate"] - v["low"] for v in vals]}))
        for m in ("base", "trained"):
            ev = j["evaluators"][m]["per_evaluator"]
            xs = (["trait rubric"] if calibration_of(j, "rubric").passed else []) + [
                k for k in ev if calibration_of(j, k).passed]
            ys = [j["rubric"][m]["mean"] if x == "trait rubric" else ev[x]["mean"] for x in xs]
            if xs:
                fig.add_trace(go.Bar(x=xs, y=[(y or 0) / 5 for y in ys], name=f"{name}: {m} score / 5" if multi
                                     else f"{m}: score / 5", text=[_fmt(y) for y in ys]))
    if fig.data:
        fig.update_layout(barmode="group", title="LLM judges that passed calibration: trained win rates (ties count "
                                                 "half) and 1-5 scores scaled to 0-1", yaxis={"range": [0, 1.05]},
                          height=420)
        figs.append(("judges", fig))

    for kind, keys in (("dpo", ("loss", "rewards/margins", "rewards/accuracies")), ("sft", ("loss",))):
        fig = go.Figure()
        for r in runs:
            rows = [x for x in metric_history(r, kind) if "loss" in x]
            for key in keys:
                pts = [(x["step"], x[key]) for x in rows if key in x]
                if pts:
                    fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                             name=f"{r.name}: {key}" if multi else key))
        if fig.data:
            fig.update_layout(title=f"{kind.upper()} training curves", xaxis_title="step", height=350)
            figs.append((f"training_{kind}", fig))
    return figs


def write_report(runs: list[Path], out_dir: Path) -> tuple[Path, Path]:
    """report.html (plotly charts and the tables) and report.md (the tables) in out_dir."""
    from .runs import write_atomic
    tables = report_tables(runs)
    md = _markdown(tables, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "report.md", md)
    import html as _html
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Report card</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px}</style></head><body>",
             f"<h1>Report card: {_html.escape(', '.join(r.name for r in runs))}</h1>"]
    first = True
    for name, fig in report_figures(runs):
        parts.append(f"<div id='fig-{name}'>" + fig.to_html(full_html=False, include_plotlyjs="inline" if first
                                                            else False) + "</div>")
        first = False
    for title, header, rows in tables:
        parts.append(f"<h2>{_html.escape(title)}</h2><table><tr>" +
                     "".join(f"<th>{_html.escape(h)}</th>" for h in header) + "</tr>" +
                     "".join("<tr>" + "".join(f"<td>{_html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
                     + "</table>")
    parts.append("</body></html>")
    write_atomic(out_dir / "report.html", "\n".join(parts))
    return out_dir / "report.html", out_dir / "report.md"
