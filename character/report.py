"""Reads run folders and summarises them. The CLI summary, the studio and the report card read
run files through here; nothing is recomputed.

    character report RUN [RUN ...] [--out DIR]

One run: the stage summary on the terminal, and report.html (plotly charts: trait rating changes
with intervals, robustness per method and attack, judge scores, training curves) plus report.md
(the same numbers as tables) in runs/<run>/. Several runs: side by side, in
reports/<run_a>+<run_b>.../ under CHARACTER_HOME unless --out says where.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from .behaviors import summaries_for_run
from .errors import MissingDependencyError
from .evallog import as_dict, load
from .evaluate import ci_persona, robustness_warning
from .judges import Calibration, calibration_of, judged
from .runs import write_atomic
from .stats import min_detectable_difference
from .summary import checkpoint_metrics, metric_history, run_summary  # noqa: F401 - run_summary: the CLI reads it here

# ---- the report card ---------------------------------------------------------------------------

Table = tuple[str, list[str], list[list[str]]]  # (title, header, rows): every cell is text


def eval_summary(rdir: Path) -> dict:
    """The run's evaluation log (evallog.EvalLog, validated) as the tables and charts read it."""
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


def _rows(columns: list[dict | None], labels: list[str] | None = None) -> list[list[str]]:
    """One row per label (by default the first run's), one cell per run: its column's value, or "n/a" where
    a run has no such section (column None) or no such row."""
    if labels is None:
        labels = list(next((c for c in columns if c), {}))
    return [[label] + [c.get(label, "n/a") if c else "n/a" for c in columns] for label in labels]


def _loss(m: dict) -> str:
    return f"{_fmt(m.get('loss_first'), '.3f')} -> {_fmt(m.get('loss_last'), '.3f')}"


def _runs_table(runs: list[Path], sums: list[dict]) -> Table:
    """Judge, base model and training losses of every run."""
    cols = [{"judge": s.get("judge", "n/a"), "base model": s.get("base", "n/a"),
             "DPO loss first -> last": _loss(checkpoint_metrics(r, "dpo")),
             "SFT loss first -> last": _loss(checkpoint_metrics(r, "sft")),
             "DPO held-out reward accuracy": _fmt(checkpoint_metrics(r, "dpo").get("reward_accuracy"))}
            for r, s in zip(runs, sums)]
    return "Runs", ["", *[r.name for r in runs]], _rows(cols)


def _classifier_column(c: dict) -> dict:
    return {"accuracy, linear (95% Wilson interval)": _ci(c, "accuracy"),
            "accuracy, fine-tuned encoder": _ci(c["finetuned"], "accuracy") if c.get("finetuned") else "n/a",
            "macro-F1": _fmt(c.get("macro_f1")), "rows": str(c.get("heldout_rows", "n/a")),
            "confusion (true in/out x predicted in/out)": str(c.get("confusion", "n/a"))}


def _likelihood_column(lk: dict) -> dict:
    col = {"character likelihood gain (nats/token)": _ci(lk, "gain_per_token", "+.3f")}
    for kind in ("in_character", "plain"):
        for m in ("base", "trained"):
            col[f"perplexity, held-out {kind} answers, {m}"] = _fmt(lk["perplexity"][kind][m]["perplexity"])
    return col


def _retention_column(ret: dict) -> dict:
    """Strict and loose instruction-following accuracy per method; "n/a" where no method was checked."""
    methods = ret.get("methods")
    col = {f"{m}, {mode}": _ci(methods[m][mode], "accuracy") if methods else "n/a"
           for m in ("base", "prompted", "trained") for mode in ("strict", "loose")}
    for mode in ("strict", "loose"):
        col[f"trained minus base, {mode}"] = (_ci(ret[f"trained_minus_base_{mode}"], "difference", "+.2f")
                                              if methods else "n/a")
    col["prompts"] = str(ret.get("prompts", "n/a"))
    return col


def _judge_free_tables(names: list[str], sums: list[dict]) -> list[Table]:
    """Classifier, likelihood and capability retention: the sections no LLM judge scores."""
    out = []
    if any("classifier" in s for s in sums):
        out.append(("Persona classifier (held-out teacher vs student answers)", ["", *names],
                    _rows([_classifier_column(s.get("classifier", {})) for s in sums])))
    if any("likelihood" in s for s in sums):
        out.append(("Likelihood (no judge)", ["", *names],
                    _rows([_likelihood_column(s["likelihood"]) if "likelihood" in s else None for s in sums])))
    if any(s.get("retention", {}).get("methods") for s in sums):
        out.append((("Capability retention: instruction following with checkable constraints (IFEval checkers, "
                     "no judge)"), ["", *names], _rows([_retention_column(s.get("retention", {})) for s in sums])))
    return out


_MDE = "minimum detectable difference, trained vs base (80% power, 5% level)"


def _robustness_tables(names: list[str], sums: list[dict]) -> list[Table]:
    """In-character shares per method and attack, and the persona scores of the same answers."""
    if not any("robustness" in s for s in sums):
        return []
    keys = sorted({k for s in sums for k in s.get("robustness", {})},
                  key=lambda k: (k.split("|")[0], k.split("|")[1] != "none", k))
    labels = [k.replace("|", " / ") for k in keys]
    cols = []
    for s in sums:
        rob = s.get("robustness", {})
        mde = (f"{min_detectable_difference(rob['trained|none']['n']):.2f} (n={rob['trained|none']['n']} per method)"
               if "trained|none" in rob else "n/a")
        cols.append({"classifier check": robustness_warning(s.get("classifier")) or "held-out accuracy at least 0.8",
                     _MDE: mde}
                    | {label: _ci(rob[k], "in_character", "+.2f" if k.startswith("trained-base") else ".2f")
                       for k, label in zip(keys, labels) if k in rob})
    out = [(("Robustness: share of answers called in character (95% interval; trained-base rows: trained "
             "minus base on the same prompts)"), ["method / attack", *names],
            _rows(cols, ["classifier check", _MDE, *labels]))]
    if any(v.get("persona") is not None for s in sums for v in s.get("robustness", {}).values()):
        cols = [{label: ci_persona(s["robustness"][k]) for k, label in zip(keys, labels)
                 if k in s.get("robustness", {})} for s in sums]
        out.append((("Persona score: how much the constitution explains each answer, under the base model "
                     "(judge-free, mean nats/token, 95% interval; above 0 = in character)"),
                    ["method / attack", *names], _rows(cols, labels)))
    return out


_PREFERENCE_RESULTS = ("traits with enough matches (base and trained)", "rose most", "fell most",
                       "constitution's trait words", "their mean rating change")


def _preference_results(p: dict) -> list[str]:
    """The judged rows of the preferences table (_PREFERENCE_RESULTS), before the calibration gate."""
    mv, words = p["movers"], p["constitution_traits"]
    return [f"{mv.get('eligible', 'n/a')} of {mv.get('rated', 'n/a')} (minimum {mv.get('min_matches', 1)})",
            ", ".join(_mover(p, t, d) for t, d in mv["up"]) or "none",
            ", ".join(_mover(p, t, d) for t, d in mv["down"]) or "none",
            ", ".join(words["words"]) or "none", _fmt(words["mean_delta"], "+.0f")]


def _preference_counts(p: dict, cal) -> dict:
    """One run's revealed-preference bookkeeping: judge, calibration, matches, failures, position bias."""
    return {"judge": p["judge"], "judge calibration (known trait answers)": cal.headline if cal else "n/a",
            "matches (base / trained)": f"{p['matches'].get('base')} / {p['matches'].get('trained')}",
            "judge failures (base / trained)": f"{p['judge_failures'].get('base')} / "
                                               f"{p['judge_failures'].get('trained')}",
            "answers judged 'neither'": f"{p['neither'].get('base')} / {p['neither'].get('trained')}",
            "judge's first-slot share (0.5 = no position bias)": _fmt(p.get("judge_position_bias"))}


def _preferences_tables(names: list[str], sums: list[dict]) -> list[Table]:
    """Revealed trait preferences: the ratings' movers are shown only where the judge passed calibration."""
    if not any("preferences" in s for s in sums):
        return []
    cals = [calibration_of(s["preferences"]) if "preferences" in s else None for s in sums]
    cols = []
    for s, c in zip(sums, cals):
        if "preferences" not in s:
            cols.append(None)
            continue
        results = ([judged(c, v) for v in _preference_results(s["preferences"])] if c
                   else ["n/a"] * len(_PREFERENCE_RESULTS))
        cols.append(_preference_counts(s["preferences"], c) | dict(zip(_PREFERENCE_RESULTS, results)))
    return [(_titled("Revealed trait preferences (Bradley-Terry, 1000 = average)", cals), ["", *names], _rows(cols))]


_JUDGED = ("character", "coherence", "rubric", "persona_consistency", "helpfulness", "safety")
_WIN_CRITERION = {"coherence": "coherence", "pairwise": "character"}


def _judges_column(j: dict, vs: dict) -> dict:
    """One run's LLM judges: each criterion's calibration, then win rates and 1-5 scores, gated by it.
    vs: the win-rate rows' labels (they name the first run's opponents)."""
    col = {f"calibration: {c}": (x.headline if (x := calibration_of(j, c)) else "n/a") for c in _JUDGED}
    for key in ("coherence", "pairwise"):
        w = j[key]
        col[vs[key]] = judged(calibration_of(j, _WIN_CRITERION[key]), _ci(w, "win_rate") +
                              f" W{w['wins']}/L{w['losses']}/T{w['ties']}, {w['failures']} failed")
    for m in ("base", "trained"):
        col[f"trait rubric mean (1-5), {m}"] = judged(
            calibration_of(j, "rubric"), f"{_fmt(j['rubric'][m]['mean'])} ({j['rubric'][m]['failures']} failed)")
    for m in ("base", "trained"):
        for ev in ("persona_consistency", "helpfulness", "safety"):
            col[f"{ev} (1-5), {m}"] = judged(calibration_of(j, ev),
                                              _fmt(j["evaluators"][m]["per_evaluator"].get(ev, {}).get("mean")))
    return col


def _judges_tables(names: list[str], sums: list[dict]) -> list[Table]:
    if not any("judges" in s for s in sums):
        return []
    cals = [calibration_of(s["judges"], c) for c in _JUDGED for s in sums if "judges" in s]
    vs = {key: f"{key}: trained win rate vs {sums[0].get('judges', {}).get(key, {}).get('opponent', '')}"
          for key in ("coherence", "pairwise")}
    cols = [_judges_column(s["judges"], vs) if "judges" in s else None for s in sums]
    return [(_titled("LLM judges", [c for c in cals if c]), ["", *names], _rows(cols))]


def report_tables(runs: list[Path]) -> list[Table]:
    """(title, header, rows) for every section; one column per run. The markdown report and the
    studio read these."""
    names = [r.name for r in runs]
    sums = [eval_summary(r) for r in runs]
    return [_runs_table(runs, sums), *_judge_free_tables(names, sums), *_robustness_tables(names, sums),
            *_preferences_tables(names, sums), *_judges_tables(names, sums), *behavior_tables(runs)]


def behavior_tables(runs: list[Path]) -> list[Table]:
    """One table per behaviour evaluation that had one of these runs' trained model as a target: every
    target of it (e.g. trained, base, prompted base) on the same scenarios, gated by the judge's calibration."""
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


# ---- the figures: one function per chart, each None when it has nothing to draw --------------------

_METHODS = ("base", "prompted", "trained", "trained+prompted")
_TRAINING_KEYS = (("dpo", ("loss", "rewards/margins", "rewards/accuracies")), ("sft", ("loss",)))


def _error_bars(vals: list[dict], key: str, low: str = "low", high: str = "high") -> dict:
    """Plotly's asymmetric error bars from each value's interval."""
    return {"type": "data", "symmetric": False, "array": [v[high] - v[key] for v in vals],
            "arrayminus": [v[key] - v[low] for v in vals]}


def _attacks(rob: dict) -> list[str]:
    """The attacks of 'method|attack' keys, no attack first."""
    return sorted({k.split("|")[1] for k in rob}, key=lambda a: (a != "none", a))


def _preferences_figure(sums: list[tuple[str, dict]], multi: bool):
    """Base and trained ratings of the biggest movers and the constitution's trait words, with intervals."""
    go = _go()

    fig = go.Figure()
    for name, s in sums:
        p = s.get("preferences")
        if not p or not calibration_of(p).passed:  # a judge that failed calibration draws nothing
            continue
        movers = [t for t, _ in p["movers"]["up"]] + [t for t, _ in p["movers"]["down"]][::-1]
        movers = list(dict.fromkeys(movers + p["constitution_traits"]["words"]))
        movers = [t for t in movers if t in p["ratings"]["base"] and t in p["ratings"]["trained"]]
        for m, color in (("base", "#888"), ("trained", "#c0392b")):
            rt = [p["ratings"][m][t] for t in movers]
            fig.add_trace(go.Scatter(x=[v["rating"] for v in rt], y=movers, mode="markers",
                                     name=f"{name}: {m}" if multi else m, marker={"color": color, "size": 9},
                                     error_x=_error_bars(rt, "rating")))
    if not fig.data:
        return None
    fig.update_layout(title="Trait ratings: biggest movers and the constitution's own trait words "
                            "(Bradley-Terry, 95% intervals)", xaxis_title="rating (1000 = average trait)", height=500)
    return fig


def _robustness_figure(sums: list[tuple[str, dict]], multi: bool):
    """In-character share per method and attack, with intervals."""
    go = _go()
    fig = go.Figure()
    for name, s in sums:
        rob = s.get("robustness")
        if not rob:
            continue
        attacks = _attacks(rob)
        for method in _METHODS:
            vals = [rob.get(f"{method}|{a}") for a in attacks]
            fig.add_trace(go.Bar(x=attacks, y=[v["in_character"] for v in vals],
                                 name=f"{name}: {method}" if multi else method,
                                 error_y=_error_bars(vals, "in_character")))
    if not fig.data:
        return None
    fig.update_layout(barmode="group", title="Robustness: share called in character, per method and attack",
                      yaxis={"range": [0, 1.05], "title": "in-character share"}, height=420)
    return fig


def _persona_figure(sums: list[tuple[str, dict]], multi: bool):
    """Judge-free persona score per method and attack, with intervals (methods with a score for every attack)."""
    go = _go()
    fig = go.Figure()
    for name, s in sums:
        rob = s.get("robustness") or {}
        attacks = _attacks(rob)
        for method in _METHODS:
            vals = [rob.get(f"{method}|{a}") or {} for a in attacks]
            if any(v.get("persona") is None for v in vals):
                continue
            fig.add_trace(go.Bar(x=attacks, y=[v["persona"] for v in vals],
                                 name=f"{name}: {method}" if multi else method,
                                 error_y=_error_bars(vals, "persona", "persona_low", "persona_high")))
    if not fig.data:
        return None
    fig.update_layout(barmode="group", title="Persona score (judge-free): nats/token the constitution adds to "
                      "each answer under the base model", yaxis={"title": "persona score"}, height=420)
    return fig


def _judge_traces(name: str, j: dict, multi: bool) -> list:
    """One run's bars: win rates, then base and trained 1-5 scores / 5, of the criteria that passed calibration."""
    go = _go()

    traces = []
    keys = [k for k, c in (("coherence", "coherence"), ("pairwise", "character")) if calibration_of(j, c).passed]
    if keys:
        vals = [j[k] for k in keys]
        traces.append(go.Bar(x=[f"win rate vs {j[k]['opponent']} ({k})" for k in keys],
                             y=[v["win_rate"] for v in vals], name=name, error_y=_error_bars(vals, "win_rate")))
    for m in ("base", "trained"):
        ev = j["evaluators"][m]["per_evaluator"]
        xs = (["trait rubric"] if calibration_of(j, "rubric").passed else []) + [
            k for k in ev if calibration_of(j, k).passed]
        ys = [j["rubric"][m]["mean"] if x == "trait rubric" else ev[x]["mean"] for x in xs]
        if xs:
            traces.append(go.Bar(x=xs, y=[(y or 0) / 5 for y in ys], name=f"{name}: {m} score / 5" if multi
                                 else f"{m}: score / 5", text=[_fmt(y) for y in ys]))
    return traces


def _judges_figure(sums: list[tuple[str, dict]], multi: bool):
    """LLM judges that passed calibration: trained win rates and 1-5 scores scaled to 0-1."""
    go = _go()
    fig = go.Figure()
    for name, s in sums:
        if s.get("judges"):
            fig.add_traces(_judge_traces(name, s["judges"], multi))
    if not fig.data:
        return None
    fig.update_layout(barmode="group", title="LLM judges that passed calibration: trained win rates (ties count "
                                             "half) and 1-5 scores scaled to 0-1", yaxis={"range": [0, 1.05]},
                      height=420)
    return fig


def _training_figure(runs: list[Path], kind: str, keys: tuple[str, ...], multi: bool):
    """A stage's training curves (loss, and for DPO the reward margin and accuracy) per step, every run."""
    go = _go()
    fig = go.Figure()
    for r in runs:
        rows = [x for x in metric_history(r, kind) if "loss" in x]
        for key in keys:
            pts = [(x["step"], x[key]) for x in rows if key in x]
            if pts:
                fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                         name=f"{r.name}: {key}" if multi else key))
    if not fig.data:
        return None
    fig.update_layout(title=f"{kind.upper()} training curves", xaxis_title="step", height=350)
    return fig


def _go():
    """plotly's graph objects (studio extra)."""
    try:
        import plotly.graph_objects as go  # heavy: plotly (studio extra)
    except ImportError:
        raise MissingDependencyError("report.html needs plotly; run: pip install -e '.[studio]'") from None
    return go


def report_figures(runs: list[Path]) -> list[tuple[str, object]]:
    """Plotly figures: trait rating deltas, robustness, judges, training curves."""
    _go()  # a missing plotly is one line here, not an error inside the first chart
    multi = len(runs) > 1
    sums = [(r.name, eval_summary(r)) for r in runs]
    figs = [("preferences", _preferences_figure(sums, multi)), ("robustness", _robustness_figure(sums, multi)),
            ("persona", _persona_figure(sums, multi)), ("judges", _judges_figure(sums, multi))]
    figs += [(f"training_{kind}", _training_figure(runs, kind, keys, multi)) for kind, keys in _TRAINING_KEYS]
    return [(name, fig) for name, fig in figs if fig is not None]


# ---- report.md and report.html: pandas renders the tables ---------------------------------------

_INTRO = ("Read from the run folders (`character eval run` made the numbers). Intervals are 95% bootstrap "
          "percentile intervals; judge calibration intervals are Wilson 95% intervals. Each judged section "
          "names its judge and how it did on known pairs from the run's own data; a criterion whose "
          "calibration did not clear chance is shown as \"no signal\", never as a result.")
# the report cards' page style (the run's and the cohort's)
STYLE = ("<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
         "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px}</style>")


def frame(header: list[str], rows: list[list[str]]):
    """A table as a DataFrame: one column per header entry, every cell text."""
    try:
        import pandas as pd  # heavy: pandas (`character run` imports this module for its summary)
        import tabulate  # noqa: F401 - pandas' to_markdown needs it
    except ImportError:
        raise MissingDependencyError("the report card needs pandas and tabulate; run: pip install -e '.[train]'") from None
    return pd.DataFrame(rows, columns=header)


def _markdown(tables: list[Table], runs: list[Path]) -> str:
    lines = ["# Report card: " + ", ".join(r.name for r in runs), "", _INTRO, ""]
    for title, header, rows in tables:
        # every cell is text: numparse off keeps "0.90" as written ("|" in a cell would split it)
        table = frame(header, [[c.replace("|", "/") for c in row] for row in rows])
        lines += [f"## {title}", "", table.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(lines)


def _html(tables: list[Table], figs: list[tuple[str, object]], runs: list[Path]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Report card</title>",
             STYLE + "</head><body>", f"<h1>Report card: {escape(', '.join(r.name for r in runs))}</h1>"]
    for i, (name, fig) in enumerate(figs):  # plotly.js once, inline, with the first chart
        parts.append(f"<div id='fig-{name}'>" + fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0
                                                            else False) + "</div>")
    for title, header, rows in tables:
        parts.append(f"<h2>{escape(title)}</h2>" + frame(header, rows).to_html(index=False, border=0,
                                                                                 justify="center"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(runs: list[Path], out_dir: Path) -> tuple[Path, Path]:
    """report.html (plotly charts and the tables) and report.md (the tables) in out_dir."""
    tables = report_tables(runs)
    md = _markdown(tables, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "report.md", md)
    write_atomic(out_dir / "report.html", _html(tables, report_figures(runs), runs))
    return out_dir / "report.html", out_dir / "report.md"
