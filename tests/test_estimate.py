"""Time estimates: the work a recipe implies scales with its sizes, remote backends are not estimated, rates
measured on another machine are not used, and `character estimate` measures once and then reads the cache."""

from __future__ import annotations

import time

import pytest
from conftest import ROOT, run_cli

from character.estimate import Rates, cached_rates, estimate, machine, rates_path, stage_work, with_actuals
from character.recipe import load_recipe
from character.runs import write_json

DEMO = ROOT / "configs" / "pirate-cpu.yaml"


def rates(**kw) -> Rates:
    base = dict(model="embedded", backend="trl", machine=machine(), measured=time.time(), generate_tps=100.0,
                score_tps=400.0, train_tps=150.0, load_s=2.0)
    return Rates(**{**base, **kw})


def test_estimates_follow_the_recipe_sizes():
    small = {r["stage"]: r["estimate_s"] for r in estimate(load_recipe(DEMO), rates())}
    big = {r["stage"]: r["estimate_s"] for r in estimate(load_recipe(DEMO, ["prompts.total=128"]), rates())}
    assert 1.8 < big["distill"] / small["distill"] < 2.1 and 1.8 < big["dpo"] / small["dpo"] < 2.1
    assert big["sft"] == small["sft"] and big["introspect"] == small["introspect"]  # untouched by the prompt count
    faster = {r["stage"]: r["estimate_s"] for r in estimate(load_recipe(DEMO), rates(train_tps=300.0))}
    assert faster["dpo"] < small["dpo"] and faster["distill"] == small["distill"]
    work = stage_work(load_recipe(DEMO, ["distill.persona_filter=false"]))
    assert work["distill"]["score"] == 0 and work["distill"]["generate"] == 2 * 64 * 96


def test_remote_backends_and_other_machines_are_not_estimated(home):
    rows = estimate(load_recipe(ROOT / "configs" / "pirate-tinker.yaml"), rates())
    by = {r["stage"]: r for r in rows}
    assert by["dpo"]["estimate_s"] is None and "tinker" in by["dpo"]["basis"]
    write_json(rates_path("embedded", "trl"), rates(machine="cuda:another").model_dump())
    assert cached_rates("embedded", "trl") is None  # measured elsewhere: measure again here
    assert all(r["estimate_s"] is None for r in estimate(load_recipe(DEMO)))
    write_json(rates_path("embedded", "trl"), rates().model_dump())
    assert cached_rates("embedded", "trl").generate_tps == 100.0
    shown = with_actuals(estimate(load_recipe(DEMO)), [{"stage": "distill", "seconds": 42, "state": "done"}])
    assert shown[1]["actual_s"] == 42 and shown[2]["actual_s"] is None


@pytest.mark.slow
def test_estimate_command_measures_once_then_reads_the_cache(home):
    env = {"CHARACTER_HOME": str(home)}
    first = run_cli("estimate", str(DEMO), "--set", "prompts.total=16", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "generation" in first.stderr and rates_path("embedded", "trl").exists()  # progress lines go to stderr
    r = cached_rates("embedded", "trl")
    assert r.generate_tps > 0 and r.train_tps > 0 and r.score_tps > 0
    second = run_cli("estimate", str(DEMO), "--set", "prompts.total=16", env=env)
    assert second.returncode == 0 and "measuring" not in second.stderr + second.stdout
    lines = {ln.split()[0]: ln for ln in second.stdout.splitlines()}
    assert set(lines) >= {"prompts", "distill", "dpo", "introspect", "sft", "merge", "eval", "pipeline"}
    assert lines["distill"].split()[1] != "-"
    bad = run_cli("estimate", str(DEMO), "--set", "prompts.total=0", env=env)
    assert bad.returncode != 0 and "prompts.total" in bad.stderr and "Traceback" not in bad.stderr
