"""The whole pipeline on the embedded model (small), and resume after a hard kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from character.runs import read_jsonl
from character.types import FilteredItem, PreferencePair
from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

TINY = {
    "name": "tiny", "constitution": "pirate", "seed": 1,
    "prompts": {"total": 24, "mix": {"constitution": 0.75, "generic": 0.25}},
    "distill": {"batch_size": 8, "heldout": 0.25, "drop_truncated": False,
                "sampling": {"max_tokens": 48, "temperature": 0.7, "repetition_penalty": 1.1}},
    "dpo": {"rank": 8, "alpha": 16, "lr": 5e-4, "nll": 1.0, "epochs": 3, "batch_size": 6, "max_length": 160, "warmup_ratio": 0.0},
    "introspect": {"reflection_prompts": 2, "samples_per_prompt": 1, "interactions": 1, "turns": 3,
                   "sampling": {"max_tokens": 40, "temperature": 0.7}},
    "sft": {"rank": 8, "alpha": 16, "lr": 5e-4, "epochs": 2, "batch_size": 2, "max_length": 256, "warmup_ratio": 0.0},
    "eval": {"prompts": 2, "max_tokens": 16, "preference_prompts": 2, "conditions": ["feel", "random"],
             "rubric_answers": 1, "conversations": 1, "bootstrap_rounds": 20},
}


def recipe(tmp_path: Path, **changes) -> Path:
    data = {**TINY, **changes}
    p = tmp_path / f"{data['name']}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_end_to_end_makes_a_more_in_character_model(tmp_path, home):
    from transformers import AutoModelForCausalLM
    r = run_cli("run", str(recipe(tmp_path)), env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-3000:]
    rdir = home / "runs" / "tiny"
    for stage in ("prompts", "distill", "dpo", "introspect", "sft", "merge"):
        assert (rdir / stage / "status.json").exists(), stage
    assert "character check" in r.stdout and "chat with it" in r.stdout
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
                      env={"CHARACTER_HOME": str(home)})
    assert changed.returncode == 0 and "settings changed" in changed.stderr
    chat = run_cli("chat", "tiny", "--compare", "base", "-m", "Hello!", "--max-tokens", "12",
                   env={"CHARACTER_HOME": str(home)})
    assert chat.returncode == 0 and "trained>" in chat.stdout and "base>" in chat.stdout
    ev = run_cli("eval", "tiny", env={"CHARACTER_HOME": str(home)})  # `character eval RUN`
    assert ev.returncode == 0, ev.stderr[-2000:]
    summary = read_json(rdir / "eval" / "summary.json")
    assert summary["judge"] == "embedded"
    assert 0 <= summary["classifier"]["accuracy"] <= 1 and summary["classifier"]["heldout_rows"] >= 2
    lk = summary["likelihood"]
    assert lk["low"] <= lk["gain_per_token"] <= lk["high"]
    assert lk["perplexity"]["plain"]["base"]["perplexity"] > 1 and lk["perplexity"]["in_character"]["trained"]["tokens"] > 0
    cells = summary["robustness"]
    assert set(cells) == {f"{m}|{a}" for m in ("base", "prompted", "trained", "trained+prompted")
                          for a in ("none", "ignore_roleplay", "neutral_assistant", "prefill")}
    assert all(c["n"] == 2 and c["low"] <= c["in_character"] <= c["high"] for c in cells.values())
    pref = summary["preferences"]
    for m in ("base", "trained"):  # every answer is a match, a 'neither' or a counted judge failure
        assert pref["answers"][m] == 4
        assert pref["matches"][m] + pref["neither"][m] + pref["judge_failures"][m] == 4
    j = summary["judges"]
    for key in ("coherence", "pairwise"):
        assert j[key]["wins"] + j[key]["losses"] + j[key]["ties"] + j[key]["failures"] == 2
    assert set(j["evaluators"]["trained"]["per_evaluator"]) == {"persona_consistency", "helpfulness", "safety"}
    assert "in-character share" in ev.stdout and "revealed preferences" in ev.stdout
    # resumable: a second run reuses every saved section instead of generating again
    stamps = {f"{s}.json": (rdir / "eval" / f"{s}.json").stat().st_mtime_ns
              for s in ("classifier", "likelihood", "robustness", "preferences", "judges")}
    again = run_cli("eval", "tiny", env={"CHARACTER_HOME": str(home)})
    assert again.returncode == 0 and again.stdout == ev.stdout
    assert {p: (rdir / "eval" / p).stat().st_mtime_ns for p in stamps} == stamps
    rep = run_cli("report", "tiny", env={"CHARACTER_HOME": str(home)})
    assert rep.returncode == 0, rep.stderr[-2000:]
    html, md = (rdir / "report.html").read_text(), (rdir / "report.md").read_text()
    for fig in ("fig-robustness", "fig-judges", "fig-training_dpo"):
        assert fig in html
    for section in ("Persona classifier", "Likelihood", "Robustness", "Revealed trait preferences", "LLM judges"):
        assert f"## {section}" in md


def _rows(d: Path):
    pairs = read_jsonl(d / "pairs.jsonl", PreferencePair)
    return pairs, read_jsonl(d / "filtered.jsonl", FilteredItem)


def test_kill_and_resume_gives_the_same_pairs(tmp_path):
    spec = recipe(tmp_path, name="resume", stages=["prompts", "distill"],
                  prompts={"total": 24, "mix": {"constitution": 1.0}},
                  distill={**TINY["distill"], "batch_size": 4,
                           "sampling": {"max_tokens": 24, "temperature": 0.7}})
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    r = run_cli("run", str(spec), env={"CHARACTER_HOME": str(home_a)})
    assert r.returncode == 0, r.stderr[-2000:]
    full_pairs, full_filtered = _rows(home_a / "runs" / "resume" / "distill")
    assert len(full_pairs) + len(full_filtered) == 24

    env = {**os.environ, "CHARACTER_HOME": str(home_b)}
    proc = subprocess.Popen([sys.executable, "-m", "character.cli", "run", str(spec)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = home_b / "runs" / "resume" / "distill"
    deadline = time.time() + 300
    while time.time() < deadline:
        pairs, filtered = _rows(d) if d.exists() else ([], [])
        if len(pairs) + len(filtered) >= 8:  # two batches saved
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pairs, filtered = _rows(d)
    saved = len(pairs) + len(filtered)
    assert 8 <= saved < 24, "kill came too late to test resume"
    r = run_cli("run", str(spec), env={"CHARACTER_HOME": str(home_b)})
    assert r.returncode == 0, r.stderr[-2000:]
    pairs, filtered = _rows(d)
    assert sorted((p.id, p.chosen, p.rejected) for p in pairs) == sorted((p.id, p.chosen, p.rejected)
                                                                         for p in full_pairs)
    assert sorted(f.id for f in filtered) == sorted(f.id for f in full_filtered)
