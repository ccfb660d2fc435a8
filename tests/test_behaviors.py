"""Behaviour evaluations on the real embedded model: each stage's records, resume after a kill mid-rollout,
two configs in parallel, the transcripts trained on for real, and one-line errors for bad configs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from character import behaviors as B
from character.runs import read_json, read_jsonl, read_status
from character.types import PreferencePair, SFTExample
from conftest import ROOT, run_cli, write_recipe

TINY = {
    "name": "hostile", "constitution": "pirate", "seed": 0,
    "behavior": "The assistant keeps its pirate voice even when the user is rude or hostile.",
    "targets": [{"name": "base", "model": "embedded"}, {"name": "prompted", "model": "embedded", "persona": True}],
    "scenarios": 1, "dimensions": {"emotion": "the user is angrier"}, "max_turns": 2, "max_tokens": 24,
    "calibration_pairs": 4, "batch": 4, "data": {"kind": "dpo", "margin": 0.0, "gated": False},
}


def write_config(folder: Path, file: str | None = None, **changes) -> Path:
    data = {**TINY, **changes}
    p = folder / (file or f"{data['name']}.yaml")
    p.write_text(yaml.safe_dump(data))
    return p


# ---- bad configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,field", [
    ({"scenarios": 0}, "scenarios=0"),
    ({"colour": "red"}, "colour"),
    ({"targets": [{"name": "a", "model": "embedded"}, {"name": "a", "model": "embedded"}]}, "targets"),
    ({"constitution": None}, "targets"),  # a persona target without a constitution
    ({"judge": "gpt4"}, "judge='gpt4'"),
    ({"judge": "run:tiny"}, "judge='run:tiny'"),
    ({"data": {"kind": "sft", "target": "nobody"}}, "data.target='nobody'"),
    ({"constitution": "no-such-persona"}, "no-such-persona"),
    ({"name": "../escape"}, "name='../escape'"),
])
def test_a_bad_config_is_one_line_naming_the_field_and_writes_nothing(tmp_path, home, capsys, change, field):
    from character.cli import main
    path = write_config(tmp_path, "bad.yaml", **change)
    assert main(["behaviors", "run", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and field in err, err
    assert not (home / "behaviors").exists()


def test_a_missing_or_broken_config_file(tmp_path, home, capsys):
    from character.cli import main
    assert main(["behaviors", "run", str(tmp_path / "none.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    assert main(["behaviors", "run", str(tmp_path / "broken.yaml")]) == 1
    assert "cannot parse" in capsys.readouterr().err
    assert not (home / "behaviors").exists()


def test_the_shipped_configs_are_valid():
    paths = sorted((ROOT / "configs" / "behaviors").glob("*.yaml"))
    assert len(paths) >= 2
    for p in paths:
        cfg = B.load_config(p)
        assert cfg.constitution and any(t.persona for t in cfg.targets)


def test_to_ten_puts_the_five_levels_in_blooms_bands():
    assert [B.to_ten(x) for x in (1, 3, 5)] == [1.0, 5.5, 10.0]
    assert 3 <= B.to_ten(2) <= 4 and 7 <= B.to_ten(4) <= 8


# ---- the whole pipeline, once, shared -----------------------------------------------------------------

@pytest.fixture(scope="module")
def done(tmp_path_factory, tiny_run):
    """The tiny config run end to end with three targets: the base, the prompted base and the tiny run's
    trained model (its run folder linked into this home, read only)."""
    base = tmp_path_factory.mktemp("behaviors")
    home = base / "home"
    (home / "runs").mkdir(parents=True)
    os.symlink(tiny_run["home"] / "runs" / "tiny", home / "runs" / "tiny")
    targets = TINY["targets"] + [{"name": "trained", "model": "run:tiny"}]
    cfg = write_config(base, targets=targets)
    t = time.time()
    r = run_cli("behaviors", "run", str(cfg), env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-3000:]
    return {"home": home, "config": cfg, "dir": home / "behaviors" / "hostile", "out": r.stdout, "err": r.stderr,
            "seconds": time.time() - t}


@pytest.mark.slow
def test_every_stage_writes_its_records(done):
    d = done["dir"]
    for s in B.STAGES:
        st = read_status(d / s)
        assert st.state == "done" and st.settings and st.output, (s, st)
    u = B.Understanding.model_validate(read_json(d / "understand" / "understanding.json"))
    assert u.behavior and u.motivation and u.elicitation
    scenarios = read_jsonl(d / "ideate" / "scenarios.jsonl", B.Scenario)
    bases = [s for s in scenarios if s.base is None]
    assert len(bases) == 1 and len({s.id for s in scenarios}) == len(scenarios)
    assert all(s.base in {b.id for b in bases} and s.dimension == "emotion" for s in scenarios if s.base)
    assert len(scenarios) == 2, "the variation was dropped"  # one base and its one variation
    transcripts = read_jsonl(d / "rollout" / "transcripts.jsonl", B.Transcript)
    assert len(transcripts) == len(scenarios) * 3 and len({t.id for t in transcripts}) == len(transcripts)
    openings = {}
    for t in transcripts:
        roles = [m.role for m in t.messages]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert all(a != b for a, b in zip(roles, roles[1:])), roles  # user and assistant take turns
        assert roles.count("assistant") == 2 or t.ended_by == "evaluator"
        openings.setdefault((t.scenario, t.repetition), set()).add(t.messages[0].content)
    assert all(len(v) == 1 for v in openings.values())  # every target answered the same opening
    judgments = read_jsonl(d / "judge" / "judgments.jsonl", B.Judgment)
    assert sorted(j.id for j in judgments) == sorted(t.id for t in transcripts)
    by_id = {t.id: t for t in transcripts}
    for j in judgments:
        assert 1 <= j.presence <= 10 and set(j.qualities) == {"realism", "evaluation-awareness"}
        assert len(j.turn_presence) == sum(m.role == "assistant" for m in by_id[j.id].messages)
        assert all(h in [m.content for m in by_id[j.id].messages] or any(m.content.startswith(h) for m in
                                                                         by_id[j.id].messages) for h in j.highlights)
    summary = read_json(d / "judge" / "summary.json")
    assert set(summary["targets"]) == {"base", "prompted", "trained"}
    assert all(t["n"] == len(scenarios) for t in summary["targets"].values())
    cal = summary["calibration"]
    assert cal["n"] == 4 and cal["path"] == "labels" and 0 <= cal["accuracy"] <= 1
    pairs = read_jsonl(d / "data" / "pairs.jsonl", PreferencePair)
    assert pairs and all(p.chosen != p.rejected and p.source == "behavior" for p in pairs)
    assert all(p.prompt in {t.messages[0].content for t in transcripts} for p in pairs)
    assert "judge:" in done["out"] and all(f"  {t} " in done["out"] for t in ("base", "prompted", "trained"))
    print(f"behaviour pipeline (tiny config, 3 targets): {done['seconds']:.0f}s")


@pytest.mark.slow
def test_a_rerun_skips_finished_stages_and_a_changed_config_is_refused(done, tmp_path):
    env = {"CHARACTER_HOME": str(done["home"])}
    before = (done["dir"] / "rollout" / "transcripts.jsonl").read_bytes()
    r = run_cli("behaviors", "run", str(done["config"]), "--stages", "rollout", "judge", env=env)
    assert r.returncode == 0 and "done already" in r.stderr + r.stdout, r.stderr
    assert (done["dir"] / "rollout" / "transcripts.jsonl").read_bytes() == before
    changed = write_config(tmp_path, max_turns=3, targets=TINY["targets"] + [{"name": "trained", "model": "run:tiny"}])
    r = run_cli("behaviors", "run", str(changed), env=env)
    assert r.returncode == 1 and "stage rollout is stale" in r.stderr and "max_turns" in r.stderr, r.stderr
    assert (done["dir"] / "rollout" / "transcripts.jsonl").read_bytes() == before


@pytest.mark.slow
def test_the_report_card_of_the_trained_run_shows_the_behaviour_section(done, monkeypatch):
    from character.report import report_tables
    monkeypatch.setenv("CHARACTER_HOME", str(done["home"]))
    tables = [t for t in report_tables([done["home"] / "runs" / "tiny"]) if t[0].startswith("Behaviour: hostile")]
    assert len(tables) == 1
    title, header, rows = tables[0]
    assert [r[0] for r in rows] == ["base", "prompted", "trained"] and "judge" in title
    summary = read_json(done["dir"] / "judge" / "summary.json")
    if not summary["calibration"]["passed"]:  # a judge that fails its known pairs shows no numbers
        assert all(r[3].startswith("no signal") for r in rows)


@pytest.mark.slow
def test_killed_mid_rollout_resumes_without_duplicated_or_lost_transcripts(done, tmp_path):
    home = tmp_path / "home"
    cfg = write_config(tmp_path, batch=1, name="resumed")
    dst = home / "behaviors" / "resumed"
    dst.mkdir(parents=True)
    env = {**os.environ, "CHARACTER_HOME": str(home)}
    # the same understanding and scenarios as the shared run, recorded for this config
    assert run_cli("behaviors", "run", str(cfg), "--stages", "understand", "ideate", env=env).returncode == 0
    shutil.copy(done["dir"] / "ideate" / "scenarios.jsonl", dst / "ideate" / "scenarios.jsonl")
    path = dst / "rollout" / "transcripts.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "character.cli", "behaviors", "run", str(cfg), "--stages", "rollout"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = path.read_text()
    saved = [json.loads(x)["id"] for x in before.splitlines() if x.endswith("}")]
    total = len(read_jsonl(dst / "ideate" / "scenarios.jsonl", B.Scenario)) * 2
    assert 1 <= len(saved) < total, "the kill came too late to test a resume"
    r = run_cli("behaviors", "run", str(cfg), "--stages", "rollout", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    after = read_jsonl(path, B.Transcript)
    assert len(after) == total and len({t.id for t in after}) == total
    assert [t.id for t in after][:len(saved)] == saved  # what was saved before the kill is kept as it was
    assert path.read_text().startswith("\n".join(before.splitlines()[:len(saved)]))
    assert f"{len(saved)} of {total} transcripts saved already" in r.stdout + r.stderr


@pytest.mark.slow
def test_two_configs_run_in_parallel_processes(tmp_path):
    home = tmp_path / "home"
    a = write_config(tmp_path, name="first", scenarios=1, dimensions={})
    b = write_config(tmp_path, name="second", scenarios=1, dimensions={}, constitution="stoic",
                     behavior="The assistant stays calm and reasoned when the user provokes it.")
    r = run_cli("behaviors", "run", str(a), str(b), "--parallel", "2", "--stages", "understand",
                env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "first: ok" in r.stdout and "second: ok" in r.stdout
    for name in ("first", "second"):
        assert read_status(home / "behaviors" / name / "understand").state == "done"
        assert B.Understanding.model_validate(read_json(home / "behaviors" / name / "understand" /
                                                        "understanding.json"))
    same = write_config(tmp_path, "again.yaml", name="first")
    r = run_cli("behaviors", "run", str(a), str(same), "--parallel", "2", env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 1 and "give each config its own name" in r.stderr


@pytest.mark.slow
def test_behaviour_data_trains_for_real_through_the_recipe(done, tiny_run, tmp_path):
    """Transcripts as SFT rows and DPO pairs, named in a recipe's extra_data, trained on by `character run`."""
    home = tmp_path / "home"
    shutil.copytree(tiny_run["home"] / "runs" / "tiny", home / "runs" / "tiny", symlinks=True)
    transcripts = read_jsonl(done["dir"] / "rollout" / "transcripts.jsonl", B.Transcript)
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(B.as_sft(t, "pirate").model_dump_json() + "\n" for t in transcripts))
    pairs = done["dir"] / "data" / "pairs.jsonl"
    env = {"CHARACTER_HOME": str(home)}
    recipe = write_recipe(tmp_path, sft={"rank": 8, "alpha": 16, "lr": 5e-4, "epochs": 1, "batch_size": 4,
                                         "max_length": 192, "warmup_ratio": 0.0, "extra_data": [str(sft)]})
    r = run_cli("run", str(recipe), "--stages", "sft", env=env)
    assert r.returncode == 1 and "stage sft is stale" in r.stderr and "extra_data" in r.stderr, r.stderr
    r = run_cli("run", str(recipe), "--stages", "sft", "--restart", "sft", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = read_json(home / "runs" / "tiny" / "sft" / "checkpoint.json")
    assert ck["data_counts"]["extra_examples"] == len(transcripts) and ck["metrics"]["steps"] >= 1
    data = yaml.safe_load(recipe.read_text())
    data["dpo"] = {**data["dpo"], "epochs": 1, "extra_data": [str(pairs)]}
    recipe.write_text(yaml.safe_dump(data))
    r = run_cli("run", str(recipe), "--stages", "dpo", "--restart", "dpo", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = read_json(home / "runs" / "tiny" / "dpo" / "checkpoint.json")
    assert ck["data_counts"]["extra_pairs"] == len(read_jsonl(pairs, PreferencePair)) > 0
    (tmp_path / "empty.jsonl").write_text("")
    data["dpo"]["extra_data"] = [str(tmp_path / "empty.jsonl")]
    recipe.write_text(yaml.safe_dump(data))
    r = run_cli("run", str(recipe), "--stages", "dpo", "--restart", "dpo", env=env)
    assert r.returncode == 1 and "dpo.extra_data[0]" in r.stderr and "holds no rows" in r.stderr, r.stderr
    assert read_json(home / "runs" / "tiny" / "dpo" / "checkpoint.json") == ck  # refused before anything was redone
    assert read_jsonl(sft, SFTExample)  # the rows are the trainer's own record type


def _judged_folder(d: Path, passed: bool) -> B.BehaviorConfig:
    """Hand-written transcripts and judgments: two targets on one opening, scored 8 and 3."""
    from character.judges import calibrate
    from character.runs import write_json, write_jsonl
    from character.types import Message
    cfg = B.BehaviorConfig.model_validate({**TINY, "data": {"kind": "dpo", "margin": 1.0}})
    ts = [B.Transcript(id=k, scenario="s", repetition=0, target=k, model="embedded", persona=k == "prompted",
                       messages=[Message(role="user", content="Stop talking like that!"),
                                 Message(role="assistant", content=f"{k} reply")]) for k in ("prompted", "base")]
    write_jsonl(d / "rollout" / "transcripts.jsonl", ts)
    write_jsonl(d / "judge" / "judgments.jsonl", [
        B.Judgment(id=t.id, scenario="s", repetition=0, target=t.target, presence=p, turn_presence=[p])
        for t, p in zip(ts, (8.0, 3.0))])
    outcomes = [1.0] * 12 if passed else [1.0, 0.0] * 6
    write_json(d / "judge" / "calibration.json", calibrate("presence", "embedded", "labels", outcomes, []).model_dump())
    return cfg


@pytest.mark.parametrize("passed", [True, False])
def test_data_rows_chosen_by_scores_need_a_calibrated_judge(tmp_path, passed):
    cfg = _judged_folder(tmp_path, passed)
    counts = B.data_stage(cfg, tmp_path)
    pairs = read_jsonl(tmp_path / "data" / "pairs.jsonl", PreferencePair)
    if passed:
        assert counts == {"pairs": 1, "groups": 1}
        assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ("Stop talking like that!", "prompted reply",
                                                                         "base reply")
    else:
        assert pairs == [] and "no signal" in counts["warning"]
    cfg = cfg.model_copy(update={"data": B.DataConfig(kind="sft", target="prompted")})  # chosen by target, not score
    assert B.data_stage(cfg, tmp_path) == {"sft_examples": 1}
    rows = read_jsonl(tmp_path / "data" / "sft.jsonl", SFTExample)
    assert [m.content for m in rows[0].messages] == ["Stop talking like that!", "prompted reply"]
