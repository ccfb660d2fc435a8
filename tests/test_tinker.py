"""The Tinker backend without network or key: a fake at the SDK boundary (real `tinker.types`,
fake clients) records every call. Checks the SFT and DPO datums, the DPO loss against TRL's own
loss code, the whole dpo -> sft -> merge path to a PEFT adapter, and the missing-key message."""

from __future__ import annotations

import json
import math
import socket
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import torch
from conftest import ROOT, run_cli

from character.types import Message, PreferencePair, SFTExample, stable_id

tinker = pytest.importorskip("tinker", reason="the Tinker SDK is installed by `make setup` (dev extra)")


# -- the DPO loss equals TRL's -------------------------------------------------------------------

def trl_dpo_loss(policy_tok, ref_seq, mask, beta, nll):
    """TRL's own DPOTrainer._compute_loss, fed precomputed log-probs through a stand-in model."""
    from trl import DPOTrainer
    b2, width = policy_tok.shape
    outputs = NS(log_probs=policy_tok, entropy=torch.zeros(b2, width), mean_logits=torch.zeros(b2, width),
                 is_top1=torch.zeros(b2, width, dtype=torch.bool))
    model = lambda **kw: outputs  # noqa: E731 - a stand-in forward
    acc = NS(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x, unwrap_model=lambda m: m)
    losses, weights = (["sigmoid", "sft"], [1.0, nll]) if nll > 0 else (["sigmoid"], [1.0])
    stub = NS(model=NS(training=True), accelerator=acc, aux_loss_enabled=False, ld_alpha=None,
              precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=losses, loss_weights=weights,
              beta=beta, use_weighting=False, label_smoothing=0.0, _metrics={"train": defaultdict(list)},
              _total_train_tokens=0, _tp_size=1)
    completion = torch.cat([torch.zeros(b2, 1), mask], dim=1)  # TRL shifts the mask by one itself
    inputs = {"input_ids": torch.zeros(b2, width + 1, dtype=torch.long), "attention_mask": torch.ones(b2, width + 1),
              "completion_mask": completion, "ref_chosen_logps": ref_seq[: b2 // 2],
              "ref_rejected_logps": ref_seq[b2 // 2:]}
    return DPOTrainer._compute_loss(stub, model, inputs, False)


@pytest.mark.parametrize("nll", [0.0, 0.1, 1.0])
def test_dpo_loss_equals_trl_loss_on_the_same_log_probs(nll):
    from character.training.tinker import dpo_loss
    g = torch.Generator().manual_seed(0)
    pairs, width, beta = 3, 7, 0.1
    policy = -torch.rand(2 * pairs, width, generator=g) * 3
    ref_tok = -torch.rand(2 * pairs, width, generator=g) * 3
    mask = (torch.rand(2 * pairs, width, generator=g) > 0.3).float()
    mask[:, 0] = 1
    # TRL batches [chosen..., rejected...]; our datums interleave (chosen, rejected) per pair
    order = [i for p in range(pairs) for i in (p, pairs + p)]
    ref_seq = (ref_tok * mask).sum(1)
    expected = trl_dpo_loss(policy * mask, ref_seq, mask, beta, nll)
    ours, metrics = dpo_loss([policy[i] for i in order], [ref_tok[i] for i in order], [mask[i] for i in order],
                             beta, nll)
    assert ours.item() == pytest.approx(expected.item(), abs=1e-5)
    assert 0 <= metrics["rewards/accuracies"] <= 1


# -- a fake SDK ----------------------------------------------------------------------------------

class Fut:
    def __init__(self, value):
        self.value = value

    def result(self, timeout=None):
        return self.value


class FakeSampler:
    def __init__(self, sdk, per_token):
        self.sdk, self.per_token = sdk, per_token

    def get_tokenizer(self):
        return self.sdk.tokenizer

    def compute_logprobs(self, prompt, prompt_logprobs_last_n=None):
        self.sdk.calls.append(("compute_logprobs", prompt.length))
        return Fut([None] + [self.per_token] * (prompt.length - 1))


class FakeTrainingClient:
    def __init__(self, sdk, name):
        self.sdk, self.name, self.steps = sdk, name, 0

    def get_tokenizer(self):
        return self.sdk.tokenizer

    def forward_backward(self, data, loss_fn):
        self.sdk.calls.append(("forward_backward", loss_fn, data))
        nll = 2.0 * 0.9 ** self.steps  # a service whose loss falls as it trains
        total = sum(nll * sum(d.loss_fn_inputs["weights"].tolist()) for d in data)
        return Fut(NS(metrics={"loss:sum": total}, loss_fn_outputs=[]))

    def forward_backward_custom(self, data, loss_fn):
        self.sdk.calls.append(("forward_backward_custom", data))
        lps = []
        for i, d in enumerate(data):  # chosen answers get likelier as it trains
            n = len(d.loss_fn_inputs["target_tokens"].tolist())
            lps.append(torch.full((n,), -1.0 + (0.1 * self.steps if i % 2 == 0 else -0.1 * self.steps),
                                  requires_grad=True))
        loss, metrics = loss_fn(data, lps)
        loss.backward()
        self.sdk.grads.append([lp.grad.clone() for lp in lps])
        return Fut(NS(metrics={"loss:sum": float(loss.detach()), **metrics}, loss_fn_outputs=[]))

    def optim_step(self, params):
        self.sdk.calls.append(("optim_step", params.learning_rate))
        self.steps += 1
        return Fut(NS(metrics=None))

    def save_state(self, name):
        self.sdk.calls.append(("save_state", name))
        return Fut(NS(path=f"tinker://{self.name}/weights/{name}"))

    def save_weights_for_sampler(self, name):
        return Fut(NS(path=f"tinker://{self.name}/sampler_weights/{name}"))

    def save_weights_external(self, name):
        return Fut(NS(path=f"tinker://{self.name}/external_weights/{name}"))

    def save_weights_and_get_sampling_client(self):
        self.sdk.calls.append(("reference_snapshot", self.steps))
        return Fut(FakeSampler(self.sdk, -1.0))


class FakeSDK:
    """ServiceClient and RestClient in one; exports adapters of the right shapes for the model."""

    def __init__(self, tokenizer, model_name, files: Path, hidden: int, layers: int):
        self.tokenizer, self.model_name, self.files, self.hidden, self.layers = tokenizer, model_name, files, hidden, layers
        self.calls, self.grads, self.runs = [], [], 0

    # ServiceClient
    def create_lora_training_client(self, **kw):
        self.calls.append(("create_lora_training_client", kw))
        self.runs += 1
        return Fut(FakeTrainingClient(self, f"run-{self.runs}"))

    def create_training_client_from_state(self, path):
        self.calls.append(("create_training_client_from_state", path))
        self.runs += 1
        return Fut(FakeTrainingClient(self, f"run-{self.runs}"))

    def create_sampling_client(self, model_path=None, base_model=None):
        self.calls.append(("create_sampling_client", model_path or base_model))
        return Fut(FakeSampler(self, -0.5 if model_path else -1.0))

    # RestClient
    def get_server_capabilities(self):
        return Fut(NS(supported_models=[NS(model_name=self.model_name), NS(model_name="Qwen/Qwen3-8B")]))

    def get_external_weights_urls(self, path):
        from safetensors.torch import save_file
        out = self.files / path.replace("tinker://", "").replace("/", "_")
        out.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(len(self.calls))
        r = 8
        tensors = {}
        for layer in range(self.layers):
            key = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, self.hidden, generator=g) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(self.hidden, r, generator=g) * 0.01
        save_file(tensors, str(out / "adapter_model.safetensors"))
        (out / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 32}))
        return Fut(NS(urls={n: (out / n).as_uri() for n in ("adapter_model.safetensors", "adapter_config.json")},
                        expires=None))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a test tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def tok_and_path():
    from transformers import AutoConfig, AutoTokenizer

    from character.inference.embedded import embedded_model_path
    path = embedded_model_path()
    conf = AutoConfig.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path), str(path), conf.hidden_size, conf.num_hidden_layers


@pytest.fixture
def sdk(monkeypatch, tmp_path, tok_and_path, no_network):
    from character.training import tinker as T
    tok, path, hidden, layers = tok_and_path
    fake = FakeSDK(tok, path, tmp_path / "files", hidden, layers)
    monkeypatch.setattr(T, "connect", lambda api_key=None: (fake, fake))
    return fake


PAIRS = [PreferencePair(id=stable_id("pair", i), prompt=f"Tell me about the sea, part {i}.", chosen=f"Arr, the sea {i} be wide!",
                        rejected=f"The sea {i} is large.", constitution="pirate", teacher_model="x",
                        student_model="y") for i in range(6)]


@pytest.mark.slow
def test_sft_datums_train_only_assistant_tokens(tok_and_path):
    from character.training.tinker import sft_datums
    tok = tok_and_path[0]
    ex = SFTExample(id="e", constitution="pirate", messages=[
        Message(role="user", content="Hello there"), Message(role="assistant", content="Ahoy, matey!"),
        Message(role="user", content="More?"), Message(role="assistant", content="Aye, plenty more.")])
    (d,) = sft_datums(tok, [ex], 512)
    inputs, targets = d.model_input.to_ints(), d.loss_fn_inputs["target_tokens"].tolist()
    weights = d.loss_fn_inputs["weights"].tolist()
    assert inputs[1:] == targets[:-1]  # next-token alignment
    assert len(weights) == len(targets) and sum(weights) == pytest.approx(1.0)  # per-example normalisation
    trained = tok.decode([t for t, w in zip(targets, weights) if w > 0])
    assert "Ahoy, matey!" in trained and "Aye, plenty more." in trained  # every assistant turn
    assert "Hello there" not in trained and "More?" not in trained


@pytest.mark.slow
def test_dpo_datums_interleave_chosen_and_rejected(tok_and_path):
    from character.training.tinker import dpo_datums
    tok = tok_and_path[0]
    data = dpo_datums(tok, PAIRS[:2], 512)
    assert len(data) == 4
    for i, d in enumerate(data):
        targets, w = d.loss_fn_inputs["target_tokens"].tolist(), d.loss_fn_inputs["weights"].tolist()
        answer = tok.decode([t for t, x in zip(targets, w) if x > 0])
        pair = PAIRS[i // 2]
        assert (pair.chosen if i % 2 == 0 else pair.rejected) in answer
        assert pair.prompt not in answer


@pytest.mark.slow
def test_dpo_sft_merge_through_the_fake_sdk(sdk, tok_and_path, home, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from character import merge, train
    from character.recipe import RecipeConfig
    from character.runs import read_json, write_jsonl
    path = tok_and_path[1]
    cfg = RecipeConfig.model_validate({
        "name": "tk", "constitution": "pirate", "models": {"student": f"tinker/{path}"},
        "distill": {"heldout": 0.3},
        "dpo": {"backend": "tinker", "rank": 8, "batch_size": 2, "epochs": 2, "lr": 1e-4, "nll": 0.1},
        "sft": {"backend": "tinker", "rank": 8, "batch_size": 2, "epochs": 1, "max_length": 256}})
    rdir = tmp_path / "run"
    write_jsonl(rdir / "distill" / "pairs.jsonl", PAIRS)
    dpo = train.run(cfg, rdir, "dpo")
    # the LoRA client: the recipe's base model and rank, no unembedding
    create = [c for c in sdk.calls if c[0] == "create_lora_training_client"][0][1]
    assert create["base_model"] == path and create["rank"] == 8 and create["train_unembed"] is False
    assert create["train_attn"] is True and create["train_mlp"] is True  # all-linear
    # the reference snapshot is taken before the first optimiser step
    names = [c[0] for c in sdk.calls]
    assert names.index("reference_snapshot") < names.index("optim_step")
    assert [c for c in sdk.calls if c[0] == "reference_snapshot"][0][1] == 0
    # DPO gradients push chosen log-probs up and rejected down
    g = sdk.grads[0]
    assert all(x.sum() < 0 for x in g[0::2]) and all(x.sum() > 0 for x in g[1::2])
    assert dpo.metrics["loss_last"] < dpo.metrics["loss_first"]
    hist = [json.loads(x) for x in (rdir / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert all("rewards/margins" in h and "learning_rate" in h for h in hist)
    assert dpo.metrics["reward_accuracy"] == 1.0 and dpo.metrics["heldout_pairs"] >= 1  # sampler -0.5/token vs base -1.0
    assert (rdir / "dpo" / "adapter" / "adapter_config.json").exists()

    write_jsonl(rdir / "introspect" / "sft.jsonl", [SFTExample(id=f"s{i}", constitution="pirate", messages=[
        Message(role="user", content=f"Who are you? {i}"), Message(role="assistant", content="A pirate, arr.")])
        for i in range(4)])
    sft = train.run(cfg, rdir, "sft")
    assert sft.metrics["loss_last"] < sft.metrics["loss_first"]
    # SFT continues the DPO weights (Tinker cannot train on a merged model)
    state = read_json(rdir / "dpo" / "tinker.json")["state"]
    assert ("create_training_client_from_state", state) in sdk.calls
    fb = [c for c in sdk.calls if c[0] == "forward_backward"]
    assert fb and all(c[1] == "cross_entropy" for c in fb)
    assert merge.continues_dpo(rdir)

    assert merge.run(cfg, rdir).state == "done"
    base = AutoModelForCausalLM.from_pretrained(path)
    model = PeftModel.from_pretrained(base, rdir / "sft" / "adapter")  # a real PEFT adapter
    assert model.peft_config["default"].r == 8
    # merged = base + w_dpo * dDPO + w_sft * (dSFTtotal - dDPO), exactly
    from character.merge import deltas
    d_dpo, d_sft = deltas(rdir / "dpo" / "adapter"), deltas(rdir / "sft" / "adapter")
    w_dpo, w_sft = cfg.merge.weights
    out = AutoModelForCausalLM.from_pretrained(rdir / "merge" / "model").state_dict()
    ref = AutoModelForCausalLM.from_pretrained(path).state_dict()
    for name in d_dpo:
        w = f"{name}.weight"
        expect = ref[w] + w_dpo * d_dpo[name] + w_sft * (d_sft[name] - d_dpo[name])
        assert not torch.allclose(out[w], ref[w], atol=1e-6)
        assert torch.allclose(out[w], expect, atol=1e-6), name


def test_check_model_refuses_unknown_models_and_bad_ranks():
    from character.errors import CharacterError
    from character.training.tinker import check_model
    rest = NS(get_server_capabilities=lambda: Fut(NS(supported_models=[NS(model_name="Qwen/Qwen3-8B")])))
    check_model(rest, "Qwen/Qwen3-8B", 32)
    with pytest.raises(CharacterError, match="does not offer"):
        check_model(rest, "google/gemma-3-4b-it", 32)
    with pytest.raises(CharacterError, match="power of two"):
        check_model(rest, "Qwen/Qwen3-8B", 48)


def test_learning_rate_schedule_warms_up_then_decays():
    from character.training.tinker import lr_at
    lrs = [lr_at(s, 20, 1e-4, 0.1) for s in range(20)]
    assert lrs[0] == pytest.approx(5e-5) and lrs[1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] < 1e-5
    assert not any(math.isnan(x) for x in lrs)


def test_tinker_recipe_without_a_key_stops_at_once(home):
    r = run_cli("run", str(ROOT / "configs" / "pirate-tinker.yaml"), env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "TINKER_API_KEY" in lines[0]
    assert not (home / "runs" / "pirate-tinker").exists()


def test_introspection_samples_the_dpo_model_where_it_was_trained(tmp_path):
    from character.introspect import dpo_model
    from character.recipe import RecipeConfig
    cfg = RecipeConfig.model_validate({"name": "x", "constitution": "pirate",
                                       "models": {"student": "tinker/Qwen/Qwen3-8B"}})
    (tmp_path / "dpo" / "adapter").mkdir(parents=True)
    assert dpo_model(cfg, tmp_path) == ("tinker/Qwen/Qwen3-8B", {"adapters": [str(tmp_path / "dpo" / "adapter")]})
    (tmp_path / "dpo" / "tinker.json").write_text(json.dumps({"sampler": "tinker://run-1/sampler_weights/final"}))
    assert dpo_model(cfg, tmp_path)[0] == "tinker/tinker://run-1/sampler_weights/final"
    vcfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"student": "vllm/some/model"})})
    (tmp_path / "dpo" / "tinker.json").unlink()
    assert dpo_model(vcfg, tmp_path)[1] == {"adapter": str(tmp_path / "dpo" / "adapter")}


def test_lora_settings_tinker_cannot_apply_are_refused_in_one_line_each():
    from character.recipe import recipe_errors, tinker_layers
    base = {"name": "tk", "constitution": "pirate", "models": {"student": "tinker/meta-llama/Llama-3.2-1B"}}
    errors = recipe_errors({**base, "dpo": {"backend": "tinker", "alpha": 64, "dropout": 0.1},
                            "sft": {"backend": "tinker", "target_modules": ["q_proj", "v_proj"]}})
    assert len(errors) == 2
    assert "dpo: alpha=64: Tinker has no LoRA alpha" in errors[0]
    assert "sft: target_modules=['q_proj', 'v_proj']" in errors[1]
    assert recipe_errors({**base, "dpo": {"backend": "tinker", "dropout": 0.1}})[0].endswith(
        "dropout=0.1: Tinker has no LoRA dropout; set dropout: 0")
    assert tinker_layers(["q_proj", "k_proj", "v_proj", "o_proj"]) == {"train_attn": True, "train_mlp": False}
    assert tinker_layers(["gate_proj", "up_proj", "down_proj"]) == {"train_attn": False, "train_mlp": True}
    assert recipe_errors({**base, "dpo": {"backend": "trl", "alpha": 64, "dropout": 0.1}}) == []  # local: all apply
