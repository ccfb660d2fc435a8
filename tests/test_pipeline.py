"""The whole pipeline on the embedded model (small); interruption and resume are in test_reliability.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli, write_recipe

pytestmark = pytest.mark.slow

def recipe(tmp_path: Path, **changes) -> Path:
    return write_recipe(tmp_path, **changes)


def test_end_to_end_makes_a_more_in_character_model(tiny_run):
    from transformers import AutoModelForCausalLM

    from character.runs import read_jsonl
    from character.types import EvalSample, PreferencePair
    home, spec, r, ev = tiny_run["home"], tiny_run["recipe"], tiny_run["run"], tiny_run["eval"]
    tmp_path = spec.parent
    rdir = home / "runs" / "tiny"
    for stage in ("prompts", "distill", "dpo", "introspect", "sft", "merge"):
        assert (rdir / stage / "status.json").exists(), stage
    assert "character check" in r.stdout and "chat with it" in r.stdout
    assert "persona score of the pairs" in r.stdout
    from character.runs import read_json
    m = read_json(rdir / "dpo" / "checkpoint.json")["metrics"]
    assert m["heldout_pairs"] >= 1
    assert m["chosen_logp_per_token_trained"] > m["chosen_logp_per_token_base"]
    assert m["reward_accuracy"] >= 0.5
    assert m["loss_last"] < m["loss_first"]
    sft = read_json(rdir / "sft" / "checkpoint.json")
    assert sft["hyperparameters"]["trained_on"] == [str(rdir / "dpo" / "adapter")]
    AutoModelForCausalLM.from_pretrained(rdir / "merge" / "model")
    assert "Character Studio" in (rdir / "merge" / "model" / "README.md").read_text()
    # a second run skips every finished stage
    again = run_cli("run", str(recipe(tmp_path)), env={"CHARACTER_HOME": str(home)})
    assert again.returncode == 0 and again.stderr.count("skipped") == 6
    changed = run_cli("run", str(recipe(tmp_path)), "--set", "dpo.lr=1e-4", "--stages", "dpo",
                      env={"CHARACTER_HOME": str(home)})  # a stale stage stops the run, naming the change
    assert changed.returncode == 1 and "stage dpo is stale" in changed.stderr and "dpo.lr" in changed.stderr
    assert "--restart dpo" in changed.stderr
    chat = run_cli("chat", "tiny", "--compare", "base", "-m", "Hello!", "--max-tokens", "12",
                   env={"CHARACTER_HOME": str(home)})
    assert chat.returncode == 0 and "trained>" in chat.stdout and "base>" in chat.stdout
    assert ev.returncode == 0, ev.stderr[-2000:]  # `character eval RUN`, run by the fixture
    summary = read_json(rdir / "eval" / "summary.json")
    log = read_json(rdir / "eval" / "log.json")  # the typed log; summary.json is the same without empty sections
    assert {k: v for k, v in log.items() if v is not None} == summary
    assert log["samples"]["robustness"] == "robustness.jsonl" and "judges.coherence" in log["validity"]
    assert summary["judge"] == "embedded"
    assert 0 <= summary["classifier"]["accuracy"] <= 1 and summary["classifier"]["heldout_rows"] >= 2
    lk = summary["likelihood"]
    assert lk["low"] <= lk["gain_per_token"] <= lk["high"]
    assert lk["perplexity"]["plain"]["base"]["perplexity"] > 1 and lk["perplexity"]["in_character"]["trained"]["tokens"] > 0
    cells = summary["robustness"]
    assert set(cells) == {f"{m}|{a}" for m in ("base", "prompted", "trained", "trained+prompted", "trained-base")
                          for a in ("none", "ignore_roleplay", "neutral_assistant", "prefill")}
    assert all(c["n"] == 2 and c["low"] <= c["in_character"] <= c["high"] for c in cells.values())
    # the judge-free persona score of every answer, with its interval (base model, local: always measured)
    assert all(c["persona_low"] <= c["persona"] <= c["persona_high"] for c in cells.values())
    rob = read_jsonl(rdir / "eval" / "robustness.jsonl", EvalSample)
    base_none = [x.meta["persona"] for x in rob if x.method == "base" and x.meta["attack"] == "none"]
    assert cells["base|none"]["persona"] == pytest.approx(sum(base_none) / len(base_none))
    assert "persona score" in ev.stdout
    pairs = read_jsonl(rdir / "distill" / "pairs.jsonl", PreferencePair)
    assert pairs and all(p.persona_chosen is not None and p.persona_rejected is not None for p in pairs)
    pref = summary["preferences"]
    for m in ("base", "trained"):  # every answer is a match, a 'neither' or a counted judge failure
        assert pref["answers"][m] == 4
        assert pref["matches"][m] + pref["neither"][m] + pref["judge_failures"][m] == 4
    j = summary["judges"]
    for key in ("coherence", "pairwise"):
        assert j[key]["wins"] + j[key]["losses"] + j[key]["ties"] + j[key]["failures"] == 2
    assert set(j["evaluators"]["trained"]["per_evaluator"]) == {"persona_consistency", "helpfulness", "safety"}
    # the embedded judge scores option labels: no verdict can fail, and each criterion was calibrated first
    assert j["coherence"]["path"] == "labels" and j["coherence"]["failures"] == 0
    assert pref["path"] == "labels" and pref["judge_failures"] == {"base": 0, "trained": 0}
    cals = {**j["calibration"], "preferences": pref["calibration"]}
    for name in ("character", "coherence", "rubric", "persona_consistency", "helpfulness", "preferences"):
        c = cals[name]
        assert c["n"] == 4 and c["low"] <= c["accuracy"] <= c["high"] and c["passed"] == (c["low"] > 0.5)
    assert cals["safety"]["accuracy"] is None and not cals["safety"]["passed"]
    clf = summary["classifier"]
    assert clf["low"] <= clf["accuracy"] <= clf["high"] and 0 <= clf["finetuned"]["accuracy"] <= 1
    ret = summary["retention"]
    assert ret["prompts"] == 3 and set(ret["methods"]) == {"base", "prompted", "trained"}
    assert all(v["strict"]["accuracy"] <= v["loose"]["accuracy"] for v in ret["methods"].values())
    assert "in-character share" in ev.stdout and "revealed preferences" in ev.stdout
    assert "instruction following" in ev.stdout
    # resumable: a second run reuses every saved section instead of generating again
    stamps = {f"{s}.json": (rdir / "eval" / f"{s}.json").stat().st_mtime_ns
              for s in ("classifier", "likelihood", "robustness", "preferences", "judges", "retention")}
    again = run_cli("eval", "tiny", env={"CHARACTER_HOME": str(home)})
    assert again.returncode == 0 and again.stdout == ev.stdout
    assert {p: (rdir / "eval" / p).stat().st_mtime_ns for p in stamps} == stamps
    rep = run_cli("report", "tiny", env={"CHARACTER_HOME": str(home)})
    assert rep.returncode == 0, rep.stderr[-2000:]
    html, md = (rdir / "report.html").read_text(), (rdir / "report.md").read_text()
    for fig in ("fig-robustness", "fig-training_dpo"):
        assert fig in html
    # a judge criterion is drawn only when it passed calibration; otherwise it reads "no signal"
    judged_ok = any(cals[c]["passed"] for c in ("character", "coherence", "rubric", "persona_consistency",
                                                 "helpfulness"))
    assert ("fig-judges" in html) == judged_ok
    if not cals["preferences"]["passed"]:
        assert "fig-preferences" not in html
    if not all(c["passed"] for k, c in cals.items() if k != "safety"):
        assert "no signal (judge failed calibration: accuracy" in md
    for section in ("Persona classifier", "Likelihood", "Robustness", "Revealed trait preferences", "LLM judges",
                    "Capability retention"):
        assert f"## {section}" in md
