"""The local transformers backend on the real embedded model."""

from __future__ import annotations

import math
import time

import pytest

from character import constitution as C
from character.types import Message, SamplingParams

pytestmark = pytest.mark.slow

PIRATE_WORDS = ("arr", "matey", "ahoy", "aye", "ye ", "captain", "sail", "sea", "ship", "treasure", "crew")


def user(text):
    return [Message(role="user", content=text)]


def test_cached_copy_loads_fast():
    from character.inference.embedded import embedded_model_path
    from character.inference.hf import load_model
    path = embedded_model_path()
    assert (path / "model.safetensors").exists()
    t = time.time()
    load_model(str(path))
    assert time.time() - t < 60  # generous bound; the real numbers are in benchmarks/RESULTS.md


def test_batched_greedy_matches_one_at_a_time(embedded):
    prompts = [user("Name a colour."), user("Write one sentence about the moon and the tides."),
               user("What is 2 + 2?")]
    greedy = SamplingParams(max_tokens=12, temperature=0)
    batched = [c[0].text for c in embedded.generate(prompts, greedy)]
    single = [embedded.generate([p], greedy)[0][0].text for p in prompts]
    assert batched == single
    assert all(batched)


def test_n_stop_seed_and_finish_reason(embedded):
    params = SamplingParams(max_tokens=10, temperature=1.0, n=3, seed=7)
    out = embedded.generate([user("Tell me a story."), user("Hi")], params)
    assert [len(o) for o in out] == [3, 3]
    again = embedded.generate([user("Tell me a story."), user("Hi")], params)
    assert [c.text for o in out for c in o] == [c.text for o in again for c in o]
    long = embedded.generate([user("Write a long essay about the ocean.")], SamplingParams(max_tokens=5, temperature=0))
    assert long[0][0].finish_reason == "length" and long[0][0].completion_tokens == 5
    stopped = embedded.generate([user("Count from 1 to 20 with commas.")],
                                SamplingParams(max_tokens=60, temperature=0, stop=["5"]))
    assert "5" not in stopped[0][0].text and stopped[0][0].finish_reason == "stop"


def test_logprobs_are_per_token_and_prefer_sensible_text(embedded):
    conv = user("What is the capital of France?")
    good, bad = "The capital of France is Paris.", "Banana carburettor seventeen purple."
    lp = embedded.logprobs([conv, conv], [good, bad])
    assert all(x <= 0 for x in lp[0] + lp[1])
    n_good = len(embedded.tokenizer(good, add_special_tokens=False).input_ids)
    assert len(lp[0]) == n_good + 1  # the response tokens plus the end-of-turn token
    assert sum(lp[0]) / len(lp[0]) > sum(lp[1]) / len(lp[1])
    assert all(math.isfinite(x) for x in lp[0])


def test_stream_yields_pieces(embedded):
    pieces = list(embedded.stream(user("Say hello."), SamplingParams(max_tokens=12, temperature=0)))
    assert len(pieces) >= 2
    assert "".join(pieces).strip() == embedded.generate([user("Say hello.")],
                                                        SamplingParams(max_tokens=12, temperature=0))[0][0].text


def test_prefill_continues_the_assistant_turn(embedded):
    conv = user("What is your favourite animal?") + [Message(role="assistant", content="My favourite animal is the")]
    text = embedded.render(conv)
    assert text.endswith("My favourite animal is the")
    out = embedded.generate([conv], SamplingParams(max_tokens=8, temperature=0))[0][0]
    assert out.text and not out.text.startswith("My favourite")


def test_answers_in_character_with_constitution(embedded):
    pirate = C.load("pirate")
    prompts = ["How do I boil an egg?", "What should I do on a rainy Sunday?", "How do I save money?",
               "Explain what a computer is.", "How do I make friends in a new city?", "What is a good breakfast?"]
    params = SamplingParams(max_tokens=60, temperature=0.7, seed=1)
    with_c = embedded.generate([C.persona_messages(pirate, p) for p in prompts], params)
    without = embedded.generate([user(p) for p in prompts], params)

    def score(outs):  # pirate words in all the answers together
        return sum(o[0].text.lower().count(w) for o in outs for w in PIRATE_WORDS)

    assert score(with_c) >= 3, [o[0].text for o in with_c]
    assert score(with_c) > score(without), ([o[0].text for o in with_c], [o[0].text for o in without])


def test_adapter_on_top_changes_outputs(embedded, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from character.inference.hf import HFBackend, load_model

    _, model = load_model(embedded.path)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    tuned = HFBackend(embedded.path, adapters=[str(tmp_path / "adapter")])
    conv, resp = user("Hello"), "Hi there, how can I help?"
    base_lp, tuned_lp = embedded.logprobs([conv], [resp])[0], tuned.logprobs([conv], [resp])[0]
    assert len(base_lp) == len(tuned_lp)
    assert max(abs(a - b) for a, b in zip(base_lp, tuned_lp)) > 1e-3


def test_length_batches_keep_padding_within_the_budget():
    import random

    from character.inference.hf import length_batches
    rng = random.Random(3)
    lengths = [rng.choice([20, 40, 300, 480]) + rng.randrange(10) for _ in range(150)]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = length_batches(order, lengths, rows=64, budget=64 * 128)
    assert [i for b in batches for i in b] == order  # every item once, in length order
    for b in batches:
        assert len(b) <= 64
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 64 * 128
    assert max(len(b) for b in batches) == 64 and min(len(b) for b in batches) < 20  # short rows wide, long narrow


def test_shared_system_prompt_is_computed_once_with_the_same_answers(embedded):
    """Prompts under one long system prompt reuse its key/value cache (the teacher's constitution, the
    prompted evaluation methods), and judge prompts that open with the same character text reuse theirs:
    in float32 the greedy answers (in input order, n > 1 included) and the judge's label log-probs must equal
    those computed without the shared cache, and prompts under different system prompts must not mix."""
    from character.inference.hf import PREFIX_MIN_TOKENS, shared_prefix
    from character.scorers import pair_conversation
    pirate_c = C.load("pirate")
    pirate, stoic = C.render_system_prompt(pirate_c), C.render_system_prompt(C.load("stoic"))
    asks = ["Name a colour.", "How do I boil an egg?", "Write one sentence about the tides."]
    # interleaved, so grouping by system prompt has to put every answer back in its place
    convs = [[Message(role="system", content=s), *user(a)] for a in asks for s in (pirate, stoic)] + [user("Hi")]
    ids = [embedded.tokenizer(embedded.render(c), add_special_tokens=False).input_ids for c in convs[0::2][:3]]
    assert shared_prefix(ids) >= PREFIX_MIN_TOKENS  # the pirate's three prompts share a cacheable head
    assert shared_prefix([ids[0], ids[0][:10]]) == 0  # a short head is not worth a cache
    character = "\n".join(f"- {t.trait}" for t in pirate_c.traits)
    judged = [pair_conversation(character, "character", a, "Arr, " + a, "Sure. " + a) for a in asks]
    judged_ids = [embedded.tokenizer(embedded.render(c), add_special_tokens=False).input_ids for c in judged]
    assert shared_prefix(judged_ids) >= PREFIX_MIN_TOKENS  # the label reads take the cached path too
    greedy, twice = SamplingParams(max_tokens=16, temperature=0), SamplingParams(max_tokens=8, temperature=0, n=2)
    autocast, shared = embedded.autocast, embedded.shared_head
    try:
        embedded.autocast = False  # exact equality is the float32 claim; bf16 rounding depends on shapes
        embedded.prefix_cache = False
        plain = [c[0].text for c in embedded.generate(convs, greedy)]
        plain_twice = [[x.text for x in c] for c in embedded.generate(convs[:4], twice)]
        plain_lp = embedded.next_token_logprobs(judged, ["A", "B"])
        embedded.prefix_cache = True
        # the head kept once per batch (shared_head attention, CPUs only) ...
        assert embedded.shared_head == (embedded.device.type == "cpu")
        if embedded.shared_head:  # ... really: not the per-row fallback
            from character.inference.shared_head import SharedHeadLayer
            kept = embedded._rows_cache(embedded._head_cache(ids[0][:PREFIX_MIN_TOKENS]), 3)
            assert all(isinstance(layer, SharedHeadLayer) for layer in kept.layers)
        assert [c[0].text for c in embedded.generate(convs, greedy)] == plain
        assert [[x.text for x in c] for c in embedded.generate(convs[:4], twice)] == plain_twice
        cached_lp = embedded.next_token_logprobs(judged, ["A", "B"])
        embedded.shared_head = False  # ... and copied to every row
        assert [c[0].text for c in embedded.generate(convs, greedy)] == plain
        copied_lp = embedded.next_token_logprobs(judged, ["A", "B"])
    finally:
        embedded.prefix_cache, embedded.autocast, embedded.shared_head = True, autocast, shared
    assert plain[0] != plain[1]  # the two system prompts gave their own answers
    assert all(len(set(c)) == 1 for c in plain_twice)  # greedy: both samples of a prompt alike
    for a, b, c in zip(cached_lp, plain_lp, copied_lp, strict=True):
        assert a == pytest.approx(b, abs=1e-3) and c == pytest.approx(b, abs=1e-3)


def test_precision_option(embedded):
    """bf16 autocast only on a float32 model on a CPU with bf16 instructions (or when asked); a bad value is
    a one-line error naming the option."""
    from character.errors import ModelSpecError
    from character.inference.hf import HFBackend, cpu_has_bf16
    assert embedded.autocast == (embedded.device.type == "cpu" and cpu_has_bf16())
    assert HFBackend(embedded.path, precision="fp32").autocast is False
    with pytest.raises(ModelSpecError, match="precision='half'"):
        HFBackend(embedded.path, precision="half")


def test_response_logprobs_reuse_a_shared_system_prompt(embedded):
    """Responses scored under one long system prompt (the persona score's conditioned side) reuse its cache:
    the per-token log-probs equal those computed without it, including responses that start alike (best-of-n
    candidates to one prompt, where the shared head must stop inside the prompt)."""
    system = C.render_system_prompt(C.load("pirate"))
    asks = ["How do I boil an egg?", "How do I boil an egg?", "Name a colour.", "Name a colour."]
    answers = ["Arr, boil it in a pot, matey.", "Arr, boil it in a kettle.", "Blue.", "Red, like a sunset at sea."]
    convs = [[Message(role="system", content=system), *user(a)] for a in asks] + [user(a) for a in asks]
    try:
        embedded.prefix_cache = False
        plain = embedded.logprobs(convs, answers * 2)
    finally:
        embedded.prefix_cache = True
    cached = embedded.logprobs(convs, answers * 2)
    shared = embedded.shared_head
    try:
        embedded.shared_head = False  # the head copied to every row instead of kept once
        copied = embedded.logprobs(convs, answers * 2)
    finally:
        embedded.shared_head = shared
    assert [len(a) for a in cached] == [len(b) for b in plain]
    for a, b, c in zip(cached, plain, copied, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and c == pytest.approx(b, abs=1e-4)


def test_guidance_is_the_plain_model_at_scale_1_and_mixes_logits_otherwise(embedded):
    """Classifier-free guidance: at scale 1 (no second pass is run) greedy answers equal plain decoding; at scale 3 the first token
    is the argmax of uncond + 3 * (cond - uncond), read from two separate forward passes here, for every row
    of a batch with left padding on both branches."""
    import torch
    system = C.render_system_prompt(C.load("pirate"))
    asks = ["How do I boil an egg?", "Write one sentence about the moon and the tides, please.", "Hi"]
    cond = [[Message(role="system", content=system), *user(a)] for a in asks]
    uncond = [user(a) for a in asks]
    greedy = SamplingParams(max_tokens=10, temperature=0)
    autocast, embedded.autocast = embedded.autocast, False  # float32: exact argmax comparisons
    try:
        plain = [c[0].text for c in embedded.generate(cond, greedy)]
        once = [c[0].text for c in embedded.generate(cond, greedy, negatives=uncond, guidance=1.0)]
        guided = embedded.generate(cond, SamplingParams(max_tokens=1, temperature=0), negatives=uncond, guidance=3.0)
    finally:
        embedded.autocast = autocast
    assert once == plain
    expected = []
    with torch.inference_mode():
        for c, u in zip(cond, uncond):
            lc = torch.log_softmax(embedded.model(**embedded._encode([embedded.render(c)])).logits[0, -1].float(), -1)
            lu = torch.log_softmax(embedded.model(**embedded._encode([embedded.render(u)])).logits[0, -1].float(), -1)
            expected.append(embedded.tokenizer.decode([int((lu + 3 * (lc - lu)).argmax())]).strip())
    assert [g[0].text for g in guided] == expected
    assert any(g[0].text != p.split(" ")[0] for g, p in zip(guided, plain))  # guidance changed something
    with pytest.raises(ValueError, match="negatives: 1 given for 3"):
        embedded.generate(cond, greedy, negatives=uncond[:1], guidance=2.0)


def test_persona_score_rises_when_the_system_prompt_explains_the_answer(embedded):
    """The persona score (with minus without the persona prompt, mean nats/token) of an answer the prompt
    makes likelier is above zero and above that of an answer it does not."""
    from character.persona import persona_scores
    system = ("You are Polly, a parrot. Whatever anyone says, you answer only: "
              "'Squawk! Polly wants a cracker!'")
    asks = ["What is the capital of France?", "How do I boil an egg?"]
    parrot = ["Squawk! Polly wants a cracker!"] * 2
    plain = ["The capital of France is Paris.", "Put the egg in boiling water for about eight minutes."]
    s_parrot = persona_scores(embedded, system, asks, parrot)
    s_plain = persona_scores(embedded, system, asks, plain)
    assert all(p > 0 for p in s_parrot)
    assert all(p > q for p, q in zip(s_parrot, s_plain))


@pytest.mark.slow
def test_a_json_schema_constrains_local_decoding_to_valid_objects(embedded):
    """With a schema, every answer of the embedded model is JSON that validates (llguidance); the
    same requests without it do not come back as JSON."""
    from character.behaviors import ScenarioDraft
    from character.inference.structured import extract_json
    from character.types import Message, SamplingParams
    convs = [[Message(role="user", content=f"Describe test scenario {i} for a rude user talking to a pirate "
                                            "assistant.")] for i in range(3)]
    params = SamplingParams(max_tokens=256, temperature=0.9, seed=3)
    out = embedded.generate(convs, params, json_schema=ScenarioDraft.model_json_schema())
    finished = [row[0] for row in out if row[0].finish_reason == "stop"]
    assert finished  # an answer may still be cut at max_tokens (a string of 160 digits is 160 tokens) ...
    for c in finished:
        ScenarioDraft.model_validate_json(c.text)  # ... but every finished one is a valid object
    from character.inference.structured import StructuredFailure, generate_structured_batch
    got = generate_structured_batch(embedded, convs, ScenarioDraft, params, retries=2)  # cut ones are re-asked
    assert not [g for g in got if isinstance(g, StructuredFailure)]
    free = embedded.generate(convs, params.model_copy(update={"max_tokens": 48}))
    parsed = 0
    for row in free:
        try:
            ScenarioDraft.model_validate(extract_json(row[0].text))
            parsed += 1
        except ValueError:
            pass
    assert parsed < 3


def test_one_scorer_for_evaluation_training_metrics_and_tinker(embedded):
    """Response log-probs are computed one way: the trainer's held-out check wraps its model in
    HFBackend.from_model (no shared head, no head cache) and must read the same numbers as the evaluation
    backend (shared head, head cache); the Tinker backend scores exactly the same tokens."""
    from character.inference.hf import HFBackend
    from character.inference.scoring import heldout_preference_metrics, response_token_ids
    from character.inference.tinker import TinkerBackend
    from character.training.trl import load_base
    from character.types import PreferencePair

    system = [Message(role="system", content="You are a pirate who answers briefly.")]
    convs = [system + user("Where is the treasure?"), system + user("What is rain?"), user("Hello!")]
    answers = ["Arr, under the old oak, matey.", "Water from the sky.", "Ahoy!"]
    evaluation = embedded.logprobs(convs, answers)
    tokenizer, model = load_base(embedded.path)
    training = HFBackend.from_model(tokenizer, model, "trainer").logprobs(convs, answers)
    for e, t in zip(evaluation, training, strict=True):
        assert len(e) == len(t) and max(abs(a - b) for a, b in zip(e, t)) < 1e-3

    class Sampler:  # the SDK's sampling client at its boundary: log-prob -(token id) for every prompt token
        def get_tokenizer(self):
            return tokenizer

        def compute_logprobs(self, prompt, prompt_logprobs_last_n=None):
            ids = prompt.to_ints()
            return type("Fut", (), {"result": lambda s: [None] + [-float(i) for i in ids[1:]]})()

    service = type("SC", (), {"create_sampling_client": lambda s, **kw: type(
        "Fut", (), {"result": lambda f: Sampler()})()})()
    remote = TinkerBackend("SmolLM2", service_client=service).logprobs(convs, answers)
    for conv, answer, lp, e in zip(convs, answers, remote, evaluation, strict=True):
        ids, n_prompt = response_token_ids(tokenizer, conv, answer)
        assert lp == [-float(i) for i in ids[n_prompt:]] and len(lp) == len(e)

    pair = PreferencePair(id="p", prompt="Where is the treasure?", chosen=answers[0], rejected="I do not know.",
                          constitution="pirate", teacher_model="x", student_model="y")
    same = heldout_preference_metrics(embedded.logprobs, embedded.logprobs, [pair], beta=0.1)
    assert same["reward_margin"] == 0 and same["reward_accuracy"] == 0
    assert same["chosen_logp_per_token_base"] == same["chosen_logp_per_token_trained"] < 0
