"""Every shipped recipe loads; bad recipes list every problem; dotted overrides work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

from character.agents import cohort
from character.errors import CharacterError
from character.recipe import load_recipe


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    first = path.read_text().splitlines()[0]
    if first.startswith("# character agents"):  # a cohort recipe (agents from their own words)
        cfg = cohort.load_config(path)
        assert first.endswith(" configs/" + path.name)
        assert cfg.agents and all(Path(p).exists() for p in cfg.corpus) and Path(cfg.motions).is_file()
        return
    cfg = load_recipe(path)
    assert first.startswith("# character run configs/" + path.name)
    assert cfg.name and cfg.constitution


def test_overrides_and_all_errors_listed(tmp_path):
    cfg = load_recipe(ROOT / "configs" / "pirate-cpu.yaml", ["dpo.lr=1e-3", "prompts.total=10", "name=other"])
    assert cfg.dpo.lr == 1e-3 and cfg.prompts.total == 10 and cfg.name == "other"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "constitution": "pirate", "dpo": {"lr": -1, "rnak": 4},
                                   "prompts": {"total": 0}}))
    with pytest.raises(CharacterError) as e:
        load_recipe(bad)
    msg = str(e.value)
    assert "3 problem(s)" in msg and "dpo.lr=-1" in msg and "dpo.rnak" in msg and "prompts.total=0" in msg
    assert "\n" not in msg
    bad.write_text(yaml.safe_dump({"name": "../x", "constitution": "pirate", "models": {"teacher": "foo/bar"},
                                   "stages": ["distill", "bake"]}))
    with pytest.raises(CharacterError) as e:
        load_recipe(bad)
    assert "name='../x'" in str(e.value) and "models.teacher" in str(e.value) and "'bake'" in str(e.value)
    with pytest.raises(CharacterError, match="dotted.key=value"):
        load_recipe(ROOT / "configs" / "pirate-cpu.yaml", ["novalue"])


def test_cli_run_rejects_bad_recipe_before_touching_files(tmp_path, home):
    r = run_cli("run", str(tmp_path / "missing.yaml"), env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("run", str(ROOT / "configs" / "pirate-cpu.yaml"), "--set", "dpo.beta=-2",
                env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 1 and "dpo.beta=-2" in r.stderr
    assert not Path(home).exists()


def test_parallel_recipes_run_as_separate_processes(tmp_path, home):
    paths = []
    for name in ("alpha", "beta"):
        data = yaml.safe_load((ROOT / "configs" / "pirate-cpu.yaml").read_text())
        data["name"] = name
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(data))
        paths.append(str(p))
    r = run_cli("run", *paths, "--parallel", "2", "--stages", "prompts", env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    for name in ("alpha", "beta"):
        assert (home / "runs" / name / "prompts" / "prompts.jsonl").exists()
        assert (home / "runs" / name / "recipe.yaml").exists()


def test_single_stage_command_and_report(tmp_path, home):
    r = run_cli("prompts", str(ROOT / "configs" / "pirate-cpu.yaml"), "--set", "prompts.total=12",
                env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert "prompts     done            12" in r.stdout
    r = run_cli("report", "pirate-cpu", env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 0 and "prompts.jsonl" in r.stdout
    r = run_cli("report", "no-such-run", env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 1 and "no such run" in r.stderr


def test_backend_and_evaluation_fields_are_checked():
    from character.recipe import recipe_errors
    data = yaml.safe_load((ROOT / "configs" / "pirate-cpu.yaml").read_text())
    data["dpo"]["backend"] = "magic"
    data["sft"]["distributed"] = "zero9"
    data["eval"]["attacks"] = ["ignore_roleplay", "shout"]
    data["eval"]["conditions"] = ["feel", "love"]
    errors = "\n".join(recipe_errors(data))
    assert "dpo.backend='magic'" in errors and "sft.distributed='zero9'" in errors
    assert "eval.attacks.1='shout'" in errors and "eval.conditions.1='love'" in errors
    assert len(errors.splitlines()) == 4  # every problem, each once
    data = yaml.safe_load((ROOT / "configs" / "pirate-tinker.yaml").read_text())
    data["dpo"]["num_processes"] = 4
    assert any("Tinker runs remotely" in e for e in recipe_errors(data))


def test_closed_choices_match_their_owners():
    from typing import get_args

    from character.evaluate import ATTACKS
    from character.preferences import CONDITIONS
    from character.prompts import SOURCES
    from character.recipe import STAGES, Attack, Condition, Source, Stage
    assert get_args(Stage) == STAGES and get_args(Source) == SOURCES
    assert set(get_args(Attack)) == set(ATTACKS) and set(get_args(Condition)) == set(CONDITIONS)


def test_eval_on_a_missing_run_says_so(home):
    r = run_cli("eval", "no-such-run", env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 1 and "no such run" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_training_setting_added_later_keeps_finished_stages_fresh():
    """`precision` came after runs began recording their settings: a DPO or SFT stage recorded by the
    version before it (settings without the field) stays fresh under the default, and goes stale when the
    recipe sets it; the pre-provenance (legacy) hash is unchanged too."""
    from character.pipeline import ADDED_LATER, _model, legacy_hash, stage_hash, stage_settings, what_changed
    from character.recipe import config_hash
    cfg = load_recipe(ROOT / "configs" / "pirate-cpu.yaml")
    for stage in ("dpo", "sft"):  # (extra_data came later still, the same way)
        before = {k: v for k, v in getattr(cfg, stage).model_dump().items() if k not in ADDED_LATER}
        recorded = {stage: before, "student": _model(cfg, cfg.models.student)}
        assert stage_hash(cfg, stage) == config_hash(recorded)
        assert legacy_hash(cfg, stage) == config_hash(before)
        changed = load_recipe(ROOT / "configs" / "pirate-cpu.yaml", [f"{stage}.precision=fp32"])
        assert stage_hash(changed, stage) != config_hash(recorded)
        assert f"{stage}.precision '(unset)' -> 'fp32'" in what_changed(recorded, stage_settings(changed, stage))


def test_distill_settings_added_later_keep_finished_stages_fresh_and_guidance_needs_a_local_teacher():
    """The teacher options of issue 12 count in the distill stage's identity only when set away from their
    defaults; guidance with a remote teacher is refused with one line naming the field and the fix."""
    from character.errors import CharacterError
    from character.pipeline import DISTILL_ADDED_LATER, legacy_hash, stage_hash, stage_settings
    from character.recipe import config_hash
    defaults = [f"distill.{k}={str(v).lower()}" for k, v in DISTILL_ADDED_LATER.items()]
    cfg = load_recipe(ROOT / "configs" / "pirate-cpu.yaml", defaults)
    before = {k: v for k, v in cfg.distill.model_dump().items() if k not in DISTILL_ADDED_LATER}
    recorded = {**stage_settings(cfg, "distill"), "distill": before}
    assert stage_hash(cfg, "distill") == config_hash(recorded)
    assert legacy_hash(cfg, "distill") == config_hash({"distill": before, "models": cfg.models.model_dump(),
                                                       "constitution": cfg.constitution})
    changed = load_recipe(ROOT / "configs" / "pirate-cpu.yaml", [*defaults, "distill.best_of=2"])
    assert stage_hash(changed, "distill") != config_hash(recorded)
    with pytest.raises(CharacterError) as e:
        load_recipe(ROOT / "configs" / "pirate-cpu.yaml", ["distill.guidance=2", "models.teacher=openai/gpt-4o-mini"])
    assert "distill.guidance" in str(e.value) and "local teacher" in str(e.value) and "\n" not in str(e.value)
