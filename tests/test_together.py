"""The together training backend: the real `together` SDK against a loopback stand-in for Together's
fine-tuning service (tests/fake_together.py), and the pipeline around it run through the real CLI."""

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
from conftest import ROOT, TINY, run_cli

pytest.importorskip("together", reason="the together extra is installed by `make setup`")
pytest.importorskip("zstandard")

from fake_together import FakeTogether  # noqa: E402

from character.errors import CharacterError, MissingKeyError  # noqa: E402
from character.training import together as T  # noqa: E402

KEY = "test-together-key-123"
EMBEDDED = T.EMBEDDED_ID
_base = {}


def make_adapter(job: dict) -> Path:
    """A real PEFT LoRA adapter for the embedded model at the job's rank and alpha (random B, so it
    changes the model), as the service would offer it for download."""
    import torch
    from peft import LoraConfig, get_peft_model

    from character.train import student_path
    from character.training.trl import load_base
    lt = job["training_type"]
    out = Path(os.environ["FAKE_TOGETHER_ADAPTERS"]) / job["id"]
    if not _base:
        _base["model"] = load_base(student_path("embedded"))[1]
    model = _base["model"]
    torch.manual_seed(len(job["id"]) + lt["lora_r"])
    peft_model = get_peft_model(model, LoraConfig(r=lt["lora_r"], lora_alpha=lt["lora_alpha"], task_type="CAUSAL_LM",
                                                  target_modules="all-linear"))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 1e-3)
    peft_model.save_pretrained(out)
    _base["model"] = peft_model.unload()  # the bare model back, for the next adapter
    return out


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TOGETHER_ADAPTERS", str(tmp_path / "served"))
    f = FakeTogether(KEY, [EMBEDDED, "Qwen/Qwen3-8B"], adapter_factory=make_adapter)
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    monkeypatch.setenv("TOGETHER_BASE_URL", f.url)
    monkeypatch.setenv("CHARACTER_TOGETHER_POLL", "0.02")
    yield f
    f.close()


def _cfg(**changes):
    from character.recipe import TrainConfig
    return TrainConfig(**{"backend": "together", "rank": 8, "alpha": 16, "lr": 5e-4, "nll": 0.5, "epochs": 2,
                          "batch_size": 2, "max_length": 160, "warmup_ratio": 0.1, "seed": 7, **changes})


def _pairs(n: int, start: int = 0):
    from character.types import PreferencePair
    return [PreferencePair(id=f"p{i}", prompt=f"Question {i}?", chosen=f"Arr, answer {i}, matey.",
                           rejected=f"Answer {i}.", constitution="pirate", teacher_model="embedded",
                           student_model="embedded") for i in range(start, start + n)]


def _log_into(rows: list):
    return lambda step, row: rows.append({"step": step, **row})


def test_dpo_job_request_polling_and_adapter(fake, tmp_path):
    out = tmp_path / "run" / "dpo"
    rows: list = []
    result = T.train_dpo(_pairs(6), EMBEDDED, _cfg(), out, _log_into(rows), heldout=_pairs(2, start=6))
    assert len(fake.creates) == 1
    body = fake.creates[0]  # what the SDK put on the wire from the recipe's section
    assert body["model"] == EMBEDDED and body["n_epochs"] == 2 and body["batch_size"] == 2
    assert body["learning_rate"] == 5e-4 and body["warmup_ratio"] == 0.1 and body["random_seed"] == 7
    assert body["max_seq_length"] == 160 and body["n_evals"] == 1
    assert body["training_type"] == {"type": "Lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                                     "lora_trainable_modules": "all-linear"}
    assert body["training_method"]["method"] == "dpo" and body["training_method"]["dpo_beta"] == 0.1
    assert body["training_method"]["rpo_alpha"] == 0.5
    uploaded = fake.files[body["training_file"]]["content"].decode().splitlines()
    assert [json.loads(x)["preferred_output"][0]["content"] for x in uploaded] == [p.chosen for p in _pairs(6)]
    held = fake.files[body["validation_file"]]["content"].decode().splitlines()
    assert [json.loads(x)["input"]["messages"][0]["content"] for x in held] == ["Question 6?", "Question 7?"]
    # events and per-step metrics, as the service reported them, in order
    events = [r["event"] for r in rows if "event" in r]
    assert events[:2] == ["job_pending", "training_start"] and events[-1] == "job_complete"
    (job_id,) = fake.jobs
    total = fake.jobs[job_id]["_total"]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, total + 1))
    assert result["steps"] == total
    # the downloaded adapter is the one served, byte for byte, as a PEFT adapter in one folder
    served = fake.served[job_id]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / "adapter" / name).read_bytes() == (served / name).read_bytes()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".together-")]
    rec = json.loads((out / "together.json").read_text())
    assert rec["job"] == job_id and rec["eval"] == {"eval_loss": 0.5}
    assert T.preference_metrics(EMBEDDED, str(out / "adapter"), _pairs(2), 0.1) == {
        "heldout_pairs": 2, "together_eval_loss": 0.5}


def test_rerun_polls_the_recorded_job_and_a_lost_create_answer_is_found(fake, tmp_path):
    out = tmp_path / "run" / "dpo"
    fake.drop_create_answer = True  # the job is made but its answer never arrives
    T.train_dpo(_pairs(4), EMBEDDED, _cfg(epochs=1), out, lambda s, r: None)
    assert len(fake.creates) == 1 and len(fake.jobs) == 1
    assert json.loads((out / "together.json").read_text())["job"] == next(iter(fake.jobs))
    T.train_dpo(_pairs(4), EMBEDDED, _cfg(epochs=1), out, lambda s, r: None)  # same data and settings
    assert len(fake.creates) == 1, "a rerun must not start a second job"
    # killed after sending the create, before its answer was recorded: the rerun finds the job
    rec = json.loads((out / "together.json").read_text())
    (out / "together.json").write_text(json.dumps({**rec, "job": None, "creating": True}))
    T.train_dpo(_pairs(4), EMBEDDED, _cfg(epochs=1), out, lambda s, r: None)
    assert len(fake.creates) == 1 and json.loads((out / "together.json").read_text())["job"] == rec["job"]
    T.train_dpo(_pairs(4), EMBEDDED, _cfg(epochs=1, lr=1e-4), out, lambda s, r: None)  # other settings
    assert len(fake.creates) == 2


def test_remote_failure_unknown_model_and_missing_key(fake, tmp_path, monkeypatch):
    fake.fail_at = 2
    with pytest.raises(CharacterError, match="ended error: the training worker ran out of GPU memory") as e:
        T.train_dpo(_pairs(6), EMBEDDED, _cfg(), tmp_path / "a" / "dpo", lambda s, r: None)
    assert "\n" not in str(e.value) and not (tmp_path / "a" / "dpo" / "adapter").exists()
    fake.fail_at = None  # a rerun after a remote failure starts a new job from the same uploads
    T.train_dpo(_pairs(6), EMBEDDED, _cfg(), tmp_path / "a" / "dpo", lambda s, r: None)
    rec = json.loads((tmp_path / "a" / "dpo" / "together.json").read_text())
    assert len(fake.creates) == 2 and rec["failed_jobs"] == [list(fake.jobs)[0]]
    assert fake.creates[0]["training_file"] == fake.creates[1]["training_file"]
    assert (tmp_path / "a" / "dpo" / "adapter" / "adapter_model.safetensors").exists()
    fake.fail_at, fake.fail_status, fake.fail_message = 1, "user_error", "training file has too few examples"
    with pytest.raises(CharacterError, match="ended user_error: training file has too few examples"):
        T.train_dpo(_pairs(6), EMBEDDED, _cfg(lr=1e-4), tmp_path / "f" / "dpo", lambda s, r: None)
    fake.fail_at = None
    with pytest.raises(CharacterError, match="Model no/such-model is not available for fine-tuning"):
        T.train_dpo(_pairs(6), "no/such-model", _cfg(), tmp_path / "b" / "dpo", lambda s, r: None)
    with pytest.raises(CharacterError, match="batch size of 64 is higher"):  # the SDK's own check, one line
        T.train_dpo(_pairs(6), EMBEDDED, _cfg(batch_size=64), tmp_path / "c" / "dpo", lambda s, r: None)
    monkeypatch.setenv("TOGETHER_API_KEY", "wrong")
    with pytest.raises(CharacterError, match="HTTP 401: Invalid API key"):
        T.train_dpo(_pairs(6), EMBEDDED, _cfg(), tmp_path / "d" / "dpo", lambda s, r: None)
    monkeypatch.delenv("TOGETHER_API_KEY")
    with pytest.raises(MissingKeyError, match="TOGETHER_API_KEY is not set"):
        T.train_dpo(_pairs(6), EMBEDDED, _cfg(), tmp_path / "e" / "dpo", lambda s, r: None)


def test_gzip_archive_and_cancelled_job(fake, tmp_path):
    fake.archive = "gz"
    T.train_dpo(_pairs(4), EMBEDDED, _cfg(epochs=1), tmp_path / "a" / "dpo", lambda s, r: None)
    assert (tmp_path / "a" / "dpo" / "adapter" / "adapter_model.safetensors").exists()
    fake.ticks_per_step = 1000  # a job that stays running until someone cancels it
    from threading import Thread
    client = T.connect()  # the user cancels through the SDK while the stage waits

    def cancel():
        while not [j for j in fake.jobs.values() if j["status"] == "running"]:
            time.sleep(0.05)
        client.fine_tuning.cancel([j for j in fake.jobs if fake.jobs[j]["status"] == "running"][0])
    t = Thread(target=cancel)
    t.start()
    with pytest.raises(CharacterError, match="ended cancelled: Job was cancelled by the user"):
        T.train_dpo(_pairs(4), EMBEDDED, _cfg(epochs=1, lr=2e-4), tmp_path / "b" / "dpo", lambda s, r: None)
    t.join()


def test_recipe_checks():
    from character.errors import ValidationError as RecipeError
    from character.recipe import RecipeConfig, validated
    with pytest.raises(RecipeError, match="epochs=1.5: Together trains whole epochs"):
        validated(RecipeConfig, {**TINY, "dpo": {**TINY["dpo"], "backend": "together", "epochs": 1.5}})
    with pytest.raises(RecipeError, match="sft.backend=together with dpo.backend=trl"):
        validated(RecipeConfig, {**TINY, "sft": {**TINY["sft"], "backend": "together"}})
    with pytest.raises(RecipeError, match="sft.rank=64: SFT on Together continues the DPO adapter"):
        validated(RecipeConfig, {**TINY, "dpo": {**TINY["dpo"], "backend": "together"},
                                 "sft": {**TINY["sft"], "backend": "together", "rank": 64, "alpha": 128}})


def test_shipped_recipe_without_key_stops_at_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TOGETHER_API_KEY"}
    env["CHARACTER_HOME"] = str(tmp_path / "home")
    r = subprocess.run([sys.executable, "-m", "character.cli", "run", "configs/pirate-together.yaml"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "TOGETHER_API_KEY is not set" in r.stderr
    assert not (tmp_path / "home" / "runs").exists()


def test_check_together_tool(fake):
    r = subprocess.run([sys.executable, "tools/check_together.py", EMBEDDED], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ})
    assert r.returncode == 0, r.stderr
    assert "TOGETHER_API_KEY: set" in r.stdout and "max LoRA rank 64" in r.stdout and KEY not in r.stdout
    r = subprocess.run([sys.executable, "tools/check_together.py", "no/such-model"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ})
    assert r.returncode == 1 and "no/such-model" in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.mark.slow  # the shared tiny run (the whole pipeline on the embedded model)
def test_pipeline_on_together_survives_a_kill_mid_poll(fake, tiny_run, tmp_path):
    """DPO and SFT on the (fake) service through `character run`; the process is killed while it waits
    for the DPO job, and the rerun resumes the same job; SFT continues it; merge takes the DPO part
    back out of the SFT adapter."""
    home = tmp_path / "home"
    src = tiny_run["home"] / "runs" / "tiny"
    for stage in ("prompts", "distill"):  # the tiny run's data: same settings, so not redone
        shutil.copytree(src / stage, home / "runs" / "tiny" / stage)
    data = {**TINY, "stages": ["prompts", "distill", "dpo", "introspect", "sft", "merge"],
            "dpo": {**TINY["dpo"], "backend": "together"}, "sft": {**TINY["sft"], "backend": "together"}}
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(data))
    env = {**os.environ, "CHARACTER_HOME": str(home)}
    fake.ticks_per_step = 10  # slow enough to kill it in the middle
    proc = subprocess.Popen([sys.executable, "-m", "character.cli", "run", str(recipe)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not any(j["status"] == "running" and j["_step"] >= 2 for j in fake.jobs.values()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (dpo_job,) = fake.jobs
    fake.ticks_per_step = 1
    r = run_cli("run", str(recipe), env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-3000:]
    run = home / "runs" / "tiny"
    assert [c.get("model") for c in fake.creates] == [EMBEDDED, None], "one DPO job, then one SFT job"
    assert json.loads((run / "dpo" / "together.json").read_text())["job"] == dpo_job
    assert fake.creates[1]["from_checkpoint"] == dpo_job and fake.creates[1]["training_method"]["method"] == "sft"
    sft_rows = fake.files[fake.creates[1]["training_file"]]["content"].decode().splitlines()
    assert len(sft_rows) == len((run / "introspect" / "sft.jsonl").read_text().splitlines())
    assert json.loads((run / "sft" / "together.json").read_text())["continues_dpo"] is True
    metrics = [json.loads(x) for x in (run / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("event") == "job_complete" for m in metrics) and any("loss" in m for m in metrics)
    assert json.loads((run / "dpo" / "status.json").read_text())["state"] == "done"
    assert (run / "merge" / "model" / "model.safetensors").exists()
    from character.merge import continues_dpo
    assert continues_dpo(run)


def test_introspection_samples_the_together_model_where_it_was_trained(tmp_path):
    """With an openai/ student (sampled at Together), introspection asks for the fine-tuned model by
    its output name instead of loading the base locally."""
    from character.introspect import dpo_model
    from character.recipe import RecipeConfig
    cfg = RecipeConfig.model_validate({**TINY, "models": {"student": "openai/Qwen/Qwen3-8B", "options": {
        "openai/Qwen/Qwen3-8B": {"base_url": "https://api.together.xyz/v1", "api_key": "${TOGETHER_API_KEY}"}}},
        "dpo": {**TINY["dpo"], "backend": "together"}})
    (tmp_path / "dpo" / "adapter").mkdir(parents=True)
    (tmp_path / "dpo" / "together.json").write_text(json.dumps({"job": "ft-1", "model_output_name": "me/Qwen3-8B-x"}))
    spec, options = dpo_model(cfg, tmp_path)
    assert spec == "openai/me/Qwen3-8B-x" and options["base_url"] == "https://api.together.xyz/v1"
    assert "adapters" not in options
