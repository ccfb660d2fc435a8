"""Real TRL training steps on the embedded model, and the exact adapter merge."""

from __future__ import annotations

import pytest
import torch
import yaml

from character.recipe import TrainConfig
from character.types import Message, PreferencePair, SFTExample

pytestmark = pytest.mark.slow

CHOSEN = ["Arr matey, drop the egg in boilin' water for nine minutes, aye!",
          "Ahoy! Hoist yer sails and chart a course, me hearty.",
          "Aye, the sea be calm today, matey, so we sail at dawn!",
          "Arr, a good captain always checks the stars, me hearty."]
REJECTED = ["Put the egg in boiling water for nine minutes.", "Plan your route and start early.",
            "The weather is calm today.", "Check the weather forecast before leaving."]


@pytest.fixture(scope="module")
def base():
    from character.inference.embedded import embedded_model_path
    return str(embedded_model_path())


@pytest.fixture(scope="module")
def dpo_run(base, tmp_path_factory):
    from character.training import trl as T
    pairs = [PreferencePair(id=f"{i:016x}", prompt=f"Tell me something, friend ({i}).", chosen=CHOSEN[i % 4],
                            rejected=REJECTED[i % 4], constitution="pirate", teacher_model="embedded",
                            student_model="embedded") for i in range(8)]
    out = tmp_path_factory.mktemp("dpo")
    logs = []
    cfg = TrainConfig(rank=8, alpha=16, lr=5e-4, batch_size=4, epochs=3, max_length=96, warmup_ratio=0.0)
    result = T.train_dpo(pairs, base, cfg, out, lambda step, row: logs.append((step, row)))
    return out, result, logs, pairs


def test_dpo_moves_adapter_and_lowers_loss(dpo_run):
    from safetensors.torch import load_file
    out, result, logs, pairs = dpo_run
    assert result["steps"] == 6 and result["adapter_max_change"] > 1e-4
    assert result["loss_last"] < result["loss_first"]
    rows = [r for _, r in logs if "rewards/margins" in r]
    assert rows and rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
    tensors = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in tensors.items())  # lora_B starts at zero


def test_preference_metrics_prefer_chosen_after_training(dpo_run, base):
    from character.training.trl import preference_metrics
    out, _, _, pairs = dpo_run
    m = preference_metrics(base, str(out / "adapter"), pairs[:4], beta=0.1)
    assert m["reward_accuracy"] > 0.5 and m["reward_margin"] > 0
    assert m["chosen_logp_per_token_trained"] > m["chosen_logp_per_token_base"]


def test_sft_on_top_of_dpo_lowers_loss(dpo_run, base, tmp_path):
    from character.training import trl as T
    dpo_out = dpo_run[0]
    ex = [SFTExample(id=str(i), constitution="pirate", messages=[
        Message(role="user", content="Who are you?"), Message(role="assistant", content="I be Captain Calico, arr!"),
        Message(role="user", content="And then?"), Message(role="assistant", content="I sail the seas, matey.")])
        for i in range(8)]
    cfg = TrainConfig(rank=8, alpha=16, lr=5e-4, batch_size=4, epochs=3, max_length=128, warmup_ratio=0.0)
    result = T.train_sft(ex, base, cfg, tmp_path, lambda s, r: None, init_adapters=[str(dpo_out / "adapter")])
    assert result["adapter_max_change"] > 1e-4 and result["loss_last"] < result["loss_first"]


def test_sft_mask_covers_every_assistant_turn(base):
    from character.inference.scoring import tokenize_for_sft
    from character.training.trl import load_base
    tok, _ = load_base(base)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy there"},
            {"role": "user", "content": "More"}, {"role": "assistant", "content": "Arr matey"}]
    row = tokenize_for_sft(tok, msgs, 512)
    masked = tok.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m])
    assert "Ahoy there" in masked and "Arr matey" in masked
    assert "Hi" not in masked and "More" not in masked and "assistant" not in masked
    assert tok.decode(row["input_ids"]) == tok.apply_chat_template(msgs, tokenize=False)


def _random_adapter(base, path, rslora: bool):
    from peft import LoraConfig, get_peft_model

    from character.training.trl import load_base
    _, model = load_base(base)
    m = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                                         use_rslora=rslora, init_lora_weights=False))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    m.save_pretrained(path)
    return path


def test_merge_is_exact_weighted_sum(dpo_run, base, tmp_path):
    """merged == W0 + 1.0 * dW_dpo + 0.25 * dW_other, where each dW is what PEFT's own single-adapter
    merge adds (rsLoRA included); the single combined adapter gives the same logits."""
    from peft import PeftModel

    from character.merge import combine, merge_into
    from character.training.trl import load_base
    a1 = dpo_run[0] / "adapter"
    a2 = _random_adapter(base, tmp_path / "rs", rslora=True)
    _, w0 = load_base(base)
    base_sd = {k: v.clone() for k, v in w0.state_dict().items()}

    def peft_delta(path):
        _, m = load_base(base)
        merged = PeftModel.from_pretrained(m, str(path)).merge_and_unload().state_dict()
        return {k: merged[k] - base_sd[k] for k in base_sd}

    d1, d2 = peft_delta(a1), peft_delta(a2)
    _, ours = load_base(base)
    merge_into(ours, [(a1, 1.0), (a2, 0.25)])
    got = ours.state_dict()
    worst = max((got[k] - (base_sd[k] + d1[k] + 0.25 * d2[k])).abs().max().item() for k in base_sd)
    assert worst < 1e-5
    assert any(d2[k].abs().max() > 0 for k in d2) and any(d1[k].abs().max() > 0 for k in d1)

    combined = combine([(a1, 1.0), (a2, 0.25)], tmp_path / "combined")
    _, m = load_base(base)
    with_adapter = PeftModel.from_pretrained(m, str(combined)).eval()
    ids = torch.tensor([[1, 523, 2171, 314, 3391, 30]])
    with torch.no_grad():
        assert torch.allclose(with_adapter(ids).logits, ours(ids).logits, atol=1e-4)


def test_merged_model_loads_in_plain_transformers(dpo_run, base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from character.merge import merge_into
    from character.training.trl import load_base
    tok, model = load_base(base)
    merge_into(model, [(dpo_run[0] / "adapter", 1.0)])
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    plain_tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    ids = plain_tok("Hello", return_tensors="pt").input_ids
    out = plain.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5


@pytest.mark.slow
def test_two_cpu_processes_save_a_complete_adapter_like_one(tmp_path):
    """`dpo.num_processes: 2` without a GPU: torchrun, gloo, the trainer's collective save on every rank."""
    from safetensors.torch import load_file

    from character import train
    from character.recipe import RecipeConfig
    from character.runs import read_json, write_jsonl
    from character.types import PreferencePair
    pairs = [PreferencePair(id=f"{i:016x}", prompt=f"Question {i}: how do I cook rice?",
                            chosen=f"Arr, matey {i}! Boil the rice, ye landlubber.", rejected=f"Boil water, add rice {i}.",
                            constitution="pirate", teacher_model="t", student_model="s", heldout=i % 4 == 0)
             for i in range(8)]
    adapters = {}
    for n in (1, 2):
        cfg = RecipeConfig.model_validate({"name": f"mp{n}", "constitution": "pirate", "dpo": {
            "rank": 4, "epochs": 1, "batch_size": 2, "max_length": 64, "num_processes": n, "warmup_ratio": 0.0}})
        rdir = tmp_path / f"mp{n}"
        write_jsonl(rdir / "distill" / "pairs.jsonl", pairs)
        (rdir / "recipe.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
        res = train.run(cfg, rdir, "dpo")
        assert res.metrics["adapter_max_change"] > 0
        adapters[n] = load_file(str(rdir / "dpo" / "adapter" / "adapter_model.safetensors"))
        steps = read_json(rdir / "dpo" / "checkpoint.json")["metrics"]["steps"]
        assert steps == (3 if n == 1 else 2)  # 6 training pairs, 2 a step on each process: the data was split
    one, two = adapters[1], adapters[2]
    assert one.keys() == two.keys() and len(one) > 0
    assert all(one[k].shape == two[k].shape and torch.isfinite(two[k]).all() for k in one)
    assert sum(float(two[k].abs().sum()) for k in two if "lora_B" in k) > 0  # trained, not the zero init


def test_precision_setting_reaches_the_trainer(tmp_path):
    """`precision` decides the trainer's bf16 flag; `auto` follows the hardware (bf16 matrix instructions)."""
    from character.inference.hf import cpu_has_bf16
    from character.training import trl as T
    for precision, want in (("fp32", False), ("bf16", True), ("auto", torch.cuda.is_bf16_supported()
                                                              if torch.cuda.is_available() else cpu_has_bf16())):
        for kind in ("dpo", "sft"):
            assert T.trainer_args(TrainConfig(precision=precision), tmp_path, kind).bf16 is want
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="precision"):
        TrainConfig(precision="half")


def test_gradient_checkpointing_follows_the_recipe(tmp_path):
    """TRL's configs default to checkpointing on; the recipe's `gradient_checkpointing` (off by default) decides."""
    from character.training import trl as T
    assert TrainConfig().gradient_checkpointing is False
    for on in (False, True):
        for kind in ("dpo", "sft"):
            assert T.trainer_args(TrainConfig(gradient_checkpointing=on), tmp_path, kind).gradient_checkpointing is on
