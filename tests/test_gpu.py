"""GPU paths, run for real on a CUDA machine (`pytest -m gpu`); skipped without one.

One DPO and one SFT step in bf16 on the GPU, QLoRA (4-bit) loading and a step where bitsandbytes
is installed, and vLLM generation with a LoRA adapter where vLLM is installed."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from character.recipe import TrainConfig  # noqa: E402
from character.types import Message, PreferencePair, SFTExample, stable_id  # noqa: E402

PAIRS = [PreferencePair(id=stable_id("gpu", i), prompt=q, chosen=f"Arr, matey! {a}", rejected=a,
                        constitution="pirate", teacher_model="t", student_model="s")
         for i, (q, a) in enumerate([("How do I boil an egg?", "Boil water, add the egg, wait nine minutes."),
                                     ("What is rain?", "Water falling from clouds."),
                                     ("Name a colour.", "Blue."), ("Say hi.", "Hello there."),
                                     ("What is two plus two?", "Four."), ("Where is Paris?", "In France.")])]


@pytest.fixture(scope="module")
def base():
    from character.inference.embedded import embedded_model_path
    return str(embedded_model_path())


def _lora_state(path):
    from safetensors.torch import load_file
    return load_file(str(path / "adapter_model.safetensors"))


def test_dpo_then_sft_steps_on_the_gpu(base, tmp_path):
    from character.training import trl as T
    logs = []
    cfg = TrainConfig(rank=8, alpha=16, lr=5e-4, epochs=3, batch_size=2, max_length=128, warmup_ratio=0.0)
    res = T.train_dpo(PAIRS, base, cfg, tmp_path / "dpo", lambda s, r: logs.append(r))
    assert res["adapter_max_change"] > 0 and res["loss_last"] < res["loss_first"]
    assert torch.cuda.max_memory_allocated() > 0  # it ran on the GPU
    tok, model = T.load_base(base)
    assert model.device.type == "cuda" and model.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported()
                                                           else torch.float32)
    ex = [SFTExample(id=f"s{i}", constitution="pirate", messages=[Message(role="user", content=p.prompt),
                                                                    Message(role="assistant", content=p.chosen)])
          for i, p in enumerate(PAIRS)]
    res = T.train_sft(ex, base, cfg, tmp_path / "sft", lambda s, r: None,
                      init_adapters=[str(tmp_path / "dpo" / "adapter")])
    assert res["adapter_max_change"] > 0 and res["loss_last"] < res["loss_first"]


def test_qlora_four_bit_step(base, tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (extra gpu)")
    from character.training import trl as T
    cfg = TrainConfig(rank=8, alpha=16, lr=5e-4, epochs=2, batch_size=2, max_length=128, load_in_4bit=True,
                      gradient_checkpointing=True)
    res = T.train_dpo(PAIRS, base, cfg, tmp_path / "dpo", lambda s, r: None)
    assert res["adapter_max_change"] > 0


def test_vllm_generates_with_a_lora_adapter(base, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (extra gpu)")
    from character.inference.vllm import VLLMBackend
    from character.training import trl as T
    from character.types import SamplingParams
    T.train_dpo(PAIRS, base, TrainConfig(rank=8, alpha=16, epochs=1, batch_size=2, max_length=128),
                tmp_path / "dpo", lambda s, r: None)
    plain = VLLMBackend(base, max_model_len=1024, gpu_memory_utilization=0.3)
    adapted = VLLMBackend(base, adapter=str(tmp_path / "dpo" / "adapter"), max_model_len=1024)
    assert adapted.llm is plain.llm  # one engine for both
    convs = [[Message(role="user", content="How do I boil an egg?")]] * 4
    params = SamplingParams(max_tokens=32, temperature=0.0)
    a, b = plain.generate(convs, params), adapted.generate(convs, params)
    assert all(x[0].text for x in a + b)


def test_qlora_sft_trains_on_the_dpo_merged_student(base, tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (extra gpu)")
    from character.training import trl as T
    cfg = TrainConfig(rank=8, alpha=16, lr=5e-4, epochs=1, batch_size=2, max_length=128, load_in_4bit=True)
    T.train_dpo(PAIRS, base, cfg, tmp_path / "dpo", lambda s, r: None)
    ex = [SFTExample(id=f"s{i}", constitution="pirate", messages=[Message(role="user", content=p.prompt),
                                                                    Message(role="assistant", content=p.chosen)])
          for i, p in enumerate(PAIRS)]
    res = T.train_sft(ex, base, cfg, tmp_path / "sft", lambda s, r: None,
                      init_adapters=[str(tmp_path / "dpo" / "adapter")])
    assert res["adapter_max_change"] > 0
    assert (tmp_path / "dpo" / "merged-student" / "config.json").exists()  # merged in full precision, then 4-bit


def test_accelerate_launch_runs_a_stage(base, tmp_path, monkeypatch):
    """The multi-GPU path: `character train` under `accelerate launch` with the shipped DDP config
    (all visible GPUs, at most 2)."""
    import yaml

    from character import train
    from character.recipe import RecipeConfig
    from character.runs import read_json, write_jsonl
    n = min(2, torch.cuda.device_count())
    monkeypatch.setenv("CHARACTER_HOME", str(tmp_path / "home"))
    cfg = RecipeConfig.model_validate({"name": "ddp", "constitution": "pirate", "models": {"student": "embedded"},
                                       "distill": {"heldout": 0.2},
                                       "dpo": {"rank": 8, "alpha": 16, "epochs": 2, "batch_size": 2,
                                               "max_length": 128, "num_processes": 2}})
    rdir = tmp_path / "run"
    write_jsonl(rdir / "distill" / "pairs.jsonl", PAIRS)
    (rdir / "recipe.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
    if n < 2:  # one GPU: the launcher and the per-process entry point, with one process
        import subprocess
        import sys
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(train.accelerate_config("ddp")), "--num_processes", "1", "-m", "character.train", str(rdir), "dpo"]
        assert subprocess.run(cmd).returncode == 0
        out = read_json(rdir / "dpo" / "result.json")
        assert out["result"]["adapter_max_change"] > 0 and (rdir / "dpo" / "adapter").exists()
        return
    res = train.run(cfg, rdir, "dpo")
    assert res.metrics["adapter_max_change"] > 0 and read_json(rdir / "dpo" / "checkpoint.json")["metrics"]["steps"] > 0
