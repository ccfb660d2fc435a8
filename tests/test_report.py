"""The report card from fixture run folders: tables and charts carry the fixture's numbers, and
several runs go side by side."""

from __future__ import annotations

import json
import re
import sys

import pytest

from character.report import report_tables, write_report


def md_rows(text: str) -> list[list[str]]:
    """The markdown tables' rows (header rows too) as cells, without the padding and the alignment rows."""
    return [[c.strip() for c in line.strip()[1:-1].split("|")] for line in text.splitlines()
            if line.startswith("|") and not re.fullmatch(r"\|[\s:|-]*\|", line)]


def squashed(text: str) -> str:
    """report.md with its table cells unpadded: '| trained / none | 0.88 [0.00, 1.00] |'."""
    return "\n".join("| " + " | ".join(cells) + " |" for cells in md_rows(text)) + "\n" + text


def cal(criterion, passed):
    acc, low, high = (0.92, 0.65, 0.99) if passed else (0.5, 0.25, 0.75)
    return {"criterion": criterion, "judge": "embedded", "path": "labels", "n": 12, "accuracy": acc, "low": low,
            "high": high, "first_slot": 0.5, "failures": 0, "passed": passed, "note": ""}


def fixture_run(root, name, in_char, gain, passed=True):
    r = root / name
    (r / "eval").mkdir(parents=True)
    (r / "dpo").mkdir()
    (r / "dpo" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 1.0 / s, "rewards/margins": 0.1 * s}) + "\n" for s in (1, 2, 3)))
    ratings = {"bold": {"rating": 1100.0, "low": 1000.0, "high": 1200.0, "elo": 1016.0, "matches": 3},
               "calm": {"rating": 900.0, "low": 800.0, "high": 1000.0, "elo": 984.0, "matches": 3}}
    summary = {
        "judge": "embedded", "base": "embedded",
        "classifier": {"accuracy": 0.93, "low": 0.78, "high": 0.98, "macro_f1": 0.92, "heldout_rows": 26, "confusion": [[12, 1], [1, 12]]},
        "likelihood": {"gain_per_token": gain, "low": gain - 0.01, "high": gain + 0.01, "n": 13,
                       "perplexity": {k: {m: {"perplexity": 5.0, "tokens": 10, "turns": 1} for m in ("base", "trained")}
                                      for k in ("in_character", "plain")}},
        "robustness": {f"{m}|{a}": {"in_character": in_char if m == "trained" else 0.25, "low": 0.0, "high": 1.0,
                                    "n": 8, "persona": 0.123 if m == "trained" else -0.2, "persona_low": -0.3,
                                    "persona_high": 0.2}
                       for m in ("base", "prompted", "trained", "trained+prompted") for a in ("none", "prefill")},
        "preferences": {"judge": "embedded", "calibration": cal("preferences", passed), "matches": {"base": 3, "trained": 3}, "judge_failures": {"base": 1, "trained": 0},
                        "neither": {"base": 0, "trained": 1}, "judge_position_bias": 0.9,
                        "ratings": {"base": ratings, "trained": ratings},
                        "movers": {"up": [["bold", 50.0]], "down": [["calm", -50.0]], "eligible": 2, "rated": 2,
                                   "min_matches": 3},
                        "constitution_traits": {"words": ["bold"], "rated": {"bold": 50.0}, "mean_delta": 50.0}},
        "judges": {"judge": "embedded",
                   "calibration": {c: cal(c, passed) for c in ("character", "coherence", "rubric",
                                                                "persona_consistency", "helpfulness")},
                   **{k: {"opponent": o, "win_rate": 0.75, "low": 0.5, "high": 1.0, "judged": 4, "wins": 2,
                          "losses": 0, "ties": 2, "failures": 1} for k, o in (("coherence", "prompted"),
                                                                             ("pairwise", "base"))},
                   "rubric": {m: {"mean": 3.5, "failures": 2, "per_trait": {}} for m in ("base", "trained")},
                   "evaluators": {m: {"per_evaluator": {e: {"mean": 4.0, "n": 3, "failures": 0} for e in
                                                        ("persona_consistency", "helpfulness", "safety")},
                                      "failures": 0, "per_conversation": {}} for m in ("base", "trained")}}}
    (r / "eval" / "summary.json").write_text(json.dumps(summary))
    return r


def test_report_shows_the_fixture_numbers(tmp_path):
    r = fixture_run(tmp_path, "alpha", 0.875, 0.084)
    html, md = write_report([r], tmp_path / "out")
    text = squashed(md.read_text())
    assert "| trained / none | 0.88 [0.00, 1.00] |" in text
    assert "| trained / none | +0.123 [-0.300, +0.200] |" in text  # the persona-score table
    assert "+0.084 [+0.074, +0.094]" in text and "0.93" in text
    assert "W2/L0/T2, 1 failed" in text and "bold +50" in text
    page = html.read_text()
    for fig in ("fig-preferences", "fig-robustness", "fig-persona", "fig-judges", "fig-training_dpo"):
        assert f"id='fig-{fig[4:]}'" in page
    assert "0.875" in page  # the robustness chart's point
    assert "calibrated: accuracy 0.92 [0.65, 0.99] on 12 known pairs" in text
    assert "judge failed calibration" not in text


def test_a_judge_that_failed_calibration_shows_no_signal(tmp_path):
    r = fixture_run(tmp_path, "alpha", 0.875, 0.084, passed=False)
    html, md = write_report([r], tmp_path / "out")
    text = squashed(md.read_text())
    line = "no signal (judge failed calibration: accuracy 0.50 [0.25, 0.75] on 12 known pairs)"
    assert line in text and line in html.read_text()
    # no judged number is shown as a result: win rates, rubric means, ratings movers
    assert "W2/L0/T2" not in text and "3.50" not in text and "bold +50" not in text
    assert "## Revealed trait preferences (Bradley-Terry, 1000 = average) - judge embedded: no signal" in text
    assert "## LLM judges - judge embedded: no signal" in text
    page = html.read_text()
    assert "id='fig-preferences'" not in page and "id='fig-judges'" not in page
    # numbers that need no judge are still there
    assert "+0.084 [+0.074, +0.094]" in text and "| trained / none | 0.88 [0.00, 1.00] |" in text


def test_several_runs_side_by_side(tmp_path):
    a, b = fixture_run(tmp_path, "alpha", 0.875, 0.084), fixture_run(tmp_path, "beta", 0.5, -0.02)
    tables = report_tables([a, b])
    header = tables[0][1]
    assert header == ["", "alpha", "beta"]
    rob = next(t for t in tables if t[0].startswith("Robustness"))
    row = next(x for x in rob[2] if x[0] == "trained / none")
    assert row[1].startswith("0.88") and row[2].startswith("0.50")
    html, _ = write_report([a, b], tmp_path / "cmp")
    assert "alpha: trained" in html.read_text()


def test_report_of_a_run_without_evaluation(tmp_path):
    r = tmp_path / "bare"
    (r / "dpo").mkdir(parents=True)
    html, md = write_report([r], tmp_path / "out")
    assert "## Runs" in md.read_text() and "Persona classifier" not in md.read_text()


def test_the_eval_log_is_typed_and_flags_validity(tmp_path):
    from pydantic import ValidationError

    from character.evallog import load, validate_section
    r = fixture_run(tmp_path, "alpha", 0.875, 0.084, passed=False)
    log = load(r / "eval")
    assert log.classifier.accuracy == 0.93 and log.robustness["trained|none"].in_character == 0.875
    assert log.judges.calibration["coherence"].passed is False
    assert log.validity["judges.coherence"].startswith("no signal (judge failed calibration")
    assert log.validity["robustness"] == "classifier held-out accuracy at least 0.8"
    # a section whose keys drift from the schema is refused when it is saved, not discovered by a reader
    bad = log.judges.model_dump()
    bad["coherence"]["win_rat"] = bad["coherence"].pop("win_rate")
    with pytest.raises(ValidationError):
        validate_section("judges", bad)


def test_the_tables_render_cell_for_cell(tmp_path):
    """report.md and report.html (pandas renders both) carry every cell of report_tables as written:
    no number re-parsed (the judge's first-slot share '0.90' stays '0.90'), HTML escaped."""
    a, b = fixture_run(tmp_path, "alpha", 0.875, 0.084), fixture_run(tmp_path, "beta", 0.5, -0.02, passed=False)
    html, md = write_report([a, b], tmp_path / "out")
    tables = report_tables([a, b])
    assert md_rows(md.read_text()) == [[c.replace("|", "/") for c in row] for _, header, rows in tables
                                       for row in [header, *rows]]
    assert "| their mean rating change | +50 | no signal" in squashed(md.read_text())
    page = html.read_text()
    assert page.count("<table") == len(tables) and "<td>trained / none</td>" in page
    assert "<td>answers judged 'neither'</td>" in page and "<td>0.50 [0.00, 1.00]</td>" in page


def test_the_terminal_summary_and_the_tables_need_no_pandas(tmp_path, monkeypatch):
    """`character run` prints run_summary from this module without the train extra; only the files need pandas."""
    from character.errors import MissingDependencyError
    from character.report import run_summary
    r = fixture_run(tmp_path, "alpha", 0.875, 0.084)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    assert run_summary(r).startswith(f"run: {r}") and report_tables([r])[0][0] == "Runs"
    with pytest.raises(MissingDependencyError, match="pandas"):
        write_report([r], tmp_path / "out")
