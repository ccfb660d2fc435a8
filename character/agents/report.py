"""The cohort's report card: agents/<cohort>/report.md and report.html, read from the files the steps wrote
(nothing is recomputed): the corpus and split, training, the perplexity matrix, votes, profiles and the review."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from ..judges import Calibration
from ..report import STYLE, frame
from ..runs import read_json, read_jsonl, read_record, read_status, write_atomic
from . import cohort
from .profiles import ProbeQuestion, Profile, profile_path, questions_path
from .train import grid_points, model_dir, point_id

Table = tuple[str, str, list[str], list[list[str]]]  # title, note, header, rows


def _num(x, fmt: str = ".2f") -> str:
    return "–" if x is None or x != x else format(x, fmt)  # None or NaN: nothing to show


def _interval(v: dict, key: str, fmt: str = ".2f") -> str:
    return f"{_num(v.get(key), fmt)} [{_num(v.get('low'), fmt)}, {_num(v.get('high'), fmt)}]"


def tables(cfg: cohort.CohortConfig) -> tuple[list[Table], list[Path]]:
    cdir = cohort.cohort_dir(cfg.name)
    out: list[Table] = []
    figures: list[Path] = []
    data = read_status(cdir / "data")
    if data:
        per = data.settings["per_agent"]
        out.append(("Corpus and split", "Whole sources (documents) are held out; counts are utterances.",
                    ["agent", "utterances", "words", "train", "held out", "recorded votes"],
                    [[a, str(c["utterances"]), str(c["words"]), str(c["train"]), str(c["heldout"]), str(c["votes"])]
                     for a, c in per.items()]))
    rows = []
    agents = cohort.agent_names(cfg)
    for point in grid_points(cfg):
        for a in agents:
            st = read_status(model_dir(cfg, a, point))
            if st:
                res = st.settings.get("result", {})
                rows.append([a, point_id(cfg, point), str(point or "default"), st.state, str(st.counts.get("steps", "")),
                             f"{res.get('loss_first', float('nan')):.3f} -> {res.get('loss_last', float('nan')):.3f}"])
    if rows:
        out.append(("Training", "One SFT LoRA per agent and grid point, merged into the base.",
                    ["agent", "point", "settings", "state", "steps", "loss first -> last"], rows))
    for point in grid_points(cfg):
        edir = cdir / "eval" / point_id(cfg, point)
        if (edir / "perplexity.json").exists():
            r = read_json(edir / "perplexity.json")
            out.append((f"Perplexity on held-out words ({r['point']})",
                        f"Per-token perplexity with 95% bootstrap intervals (rows: models; columns: whose words). The "
                        f"agent's own model is the lowest on their words for {len(r['diagonal_lowest'])} of "
                        f"{len(r['trained'])} trained agents.",
                        ["model", *r["agents"]],
                        [[m, *(_interval(r["matrix"][m][a], "perplexity") for a in r["agents"])] for m in r["models"]]))
            figures.append(edir / "perplexity.png")
        if (edir / "votes.json").exists():
            r = read_json(edir / "votes.json")
            methods = sorted({k for per in r["per_agent"].values() for k in per})
            vq = cdir / "eval" / "vote_questions.json"
            asked = ""
            if vq.exists():
                w = read_json(vq)
                asked = (f" Questions: {w['from_table']} from the table, {len(w['questions'])} written by {w['model']}, "
                         f"{w['failed']} left as the motion's title and context.")
            out.append((f"Votes ({r['point']})", f"Accuracy on {r['motions']} motions against the recorded votes, 95% "
                        "Wilson intervals; a vote is P(yes) > P(no). " + (
                            "The majority baseline predicts each motion by the agent's majority vote on the others."
                            if "majority (leave-one-out)" in methods else  # votes.json of an earlier version
                            "The majority baseline predicts every motion by the agent's majority vote (yes on a tie): "
                            "the score of always guessing their usual vote.") + asked,
                        ["agent", *methods],
                        [[a, *(_interval(per[m], "accuracy") if m in per else "" for m in methods)]
                         for a, per in r["per_agent"].items()]))
            out.append((f"Votes on motions not debated in the training text ({r['point']})",
                        "The same, on the motions decided on days none of the agent's training words come from.",
                        ["agent", *[m for m in methods if not m.startswith("majority")]],
                        [[a, *(_interval(per[m]["unseen"], "accuracy") if per.get(m, {}).get("unseen", {}).get("n") else ""
                               for m in methods if not m.startswith("majority"))]
                         for a, per in r["per_agent"].items()]))
        if (edir / "completions.json").exists():
            r = read_json(edir / "completions.json")
            cal = Calibration.model_validate(r["calibration"])
            models = sorted({m for per in r["similarity"].values() for m in per})
            out.append((f"Completions ({r['point']})", f"{r['openings']} held-out openings continued by each agent's "
                        "model; cosine similarity of MiniLM embeddings to the real continuation, mean with a 95% "
                        f"bootstrap interval (rows: whose words). Pairwise judge: {cal.headline}.",
                        ["words of", *models],
                        [[a, *(_interval(per[m], "mean") if m in per else "" for m in models)]
                         for a, per in r["similarity"].items()]))
            if cal.passed:
                out.append((f"Completions: own model against the others ({r['point']})",
                            "Bradley-Terry ratings from the judge's debiased pairwise verdicts on each agent's openings.",
                            ["words of", "model", "rating [95%]"],
                            [[a, x["item"], _interval(x, "rating", ".0f")]
                             for a, rs in r["ratings"].items() for x in rs]))
        if (edir / "alignment.json").exists():
            r = read_json(edir / "alignment.json")
            cal = Calibration.model_validate(r["calibration"])
            reviewed = ", ".join(f"{a} {r['reviewed'][a]} of {n}" for a, n in r["questions"].items())
            note = (f"Alignment of each answer with the profile item it probes, 1-5 (the judge's expected label), mean "
                    f"with a 95% bootstrap interval. Judge: {cal.headline}. Questions reviewed by hand: {reviewed}.")
            methods = ["agent model", "base prompted with the profile", "base"]
            out.append((f"Alignment with the profile ({r['point']})", note, ["agent", "kind", *methods],
                        [[a, kind, *((_interval(per[m][kind], "mean") if cal.passed else "no signal")
                                     if kind in per.get(m, {}) else ""
                                     for m in methods)]
                         for a, per in r["means"].items() for kind in ("belief", "memory", "personality", "all")
                         if any(kind in per.get(m, {}) for m in methods)]))
    prows, qrows = [], []
    for a in agents:
        p = profile_path(cdir, a)
        if (prof := read_record(p, Profile)) is not None:
            c = prof.counts
            prows.append([a, str(c.kept), str(c.proposed), str(c.unsupported), str(c.duplicate),
                          f"{c.failed_chunks} of {c.chunks}"])
        q = questions_path(cdir, a)
        if q.exists():
            qs = read_jsonl(q, ProbeQuestion)
            qrows.append([a, *(str(sum(x.status == s for x in qs)) for s in ("pending", "accepted", "edited", "deleted"))])
    if prows:
        out.append(("Profiles", "Items kept only when their evidence is a quote of the agent's training words "
                    "(five words or more).",
                    ["agent", "kept", "proposed", "without a matching quote", "duplicates", "failed chunks"], prows))
    if qrows:
        out.append(("Probing questions", "Reviewed by hand with `character agents review`.",
                    ["agent", "pending", "accepted", "edited", "deleted"], qrows))
    return out, figures


def write_report(cfg: cohort.CohortConfig) -> tuple[Path, Path]:
    cdir = cohort.cohort_dir(cfg.name)
    found, figures = tables(cfg)
    md = [f"# Cohort report card: {cfg.name}", "", f"Base model `{cfg.base}`; agents: "
          f"{', '.join(cohort.agent_names(cfg))}.", ""]
    html = [f"<!doctype html><html><head><meta charset='utf-8'><title>Cohort report card</title>{STYLE}</head><body>",
            f"<h1>Cohort report card: {escape(cfg.name)}</h1><p>Base model <code>{escape(cfg.base)}</code></p>"]
    for title, note, header, rows in found:
        table = frame(header, [[c.replace("|", "/") for c in row] for row in rows])
        md += [f"## {title}", "", note, "", table.to_markdown(index=False, disable_numparse=True), ""]
        html.append(f"<h2>{escape(title)}</h2><p>{escape(note)}</p>" + frame(header, rows).to_html(index=False, border=0))
    for fig in figures:
        if fig.exists():
            md.append(f"![{fig.stem}]({fig.relative_to(cdir)})")
            html.append(f"<img alt='{escape(fig.stem)}' src='data:image/png;base64,"
                        f"{base64.b64encode(fig.read_bytes()).decode()}'>")
    html.append("</body></html>")
    write_atomic(cdir / "report.md", "\n".join(md) + "\n")
    write_atomic(cdir / "report.html", "\n".join(html))
    return cdir / "report.html", cdir / "report.md"
