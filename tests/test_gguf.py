"""GGUF export of a trained run's merged model, served by the real llama.cpp server: greedy answers
match the transformers model's (f32); the q8_0 file's agreement is measured (f16, the default, sits
between them: it gave the same answers as f32 on these prompts when measured by hand)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from character.inference.hf import HFBackend
from openai import OpenAI
from character.types import Message, SamplingParams
from conftest import free_port, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.server]
PROMPTS = ["How do I boil an egg?", "What is rain?", "Tell me about the sea."]


def serve(path, log):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "1024", "--model_alias", "character"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(base + "/models", timeout=2)
            return proc, base
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "llama.cpp server did not start"
            time.sleep(0.5)


def test_the_exported_character_answers_like_the_merged_model(tiny_run, tmp_path):
    home = tiny_run["home"]
    rdir = home / "runs" / "tiny"
    greedy = SamplingParams(max_tokens=24, temperature=0.0, seed=0)
    convs = [[Message(role="user", content=p)] for p in PROMPTS]
    hf = HFBackend(str(rdir / "merge" / "model"), precision="fp32")  # the f32 GGUF's claim is float32 equality
    want = [o[0].text for o in hf.generate(convs, greedy)]
    tok = hf.tokenizer
    agreement, answers = {}, {}
    for quant in ("f32", "q8_0"):
        r = run_cli("export", "tiny", "--format", "gguf", "--quant", quant, env={"CHARACTER_HOME": str(home)})
        assert r.returncode == 0, r.stderr[-2000:]
        path = rdir / "export" / f"tiny-{quant}.gguf"
        assert path.exists() and "FROM ./tiny-" in (rdir / "export" / "Modelfile").read_text()
        with open(tmp_path / f"{quant}.log", "w") as log:
            proc, base = serve(path, log)
            try:  # the server's own default repeat_penalty is 1.1; greedy here means none
                client = OpenAI(base_url=base, api_key="none")
                got = [client.chat.completions.create(
                    model="character", messages=[m.model_dump() for m in c], max_tokens=24, temperature=0.0,
                    extra_body={"repeat_penalty": 1.0}).choices[0].message.content.strip() for c in convs]
            finally:
                proc.terminate()
                proc.wait(20)
        same = total = 0
        for a, b in zip(want, got):
            x, y = tok(a).input_ids, tok(b).input_ids
            same += next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), min(len(x), len(y)))
            total += len(x)
        agreement[quant] = same / total
        answers[quant] = got
        if quant == "f32":
            assert got == want  # full precision: the same greedy answers as transformers
    print(f"greedy token agreement with transformers (shared prefix): {agreement}")
    # Rounded weights: near-tied next tokens can flip and the texts part ways, earlier or later depending on the
    # trained weights (measured 0.21 on the tiny run of 2026-12-02, where one answer parted after "Boilin").
    # A broken q8_0 export (wrong layout or scales) answers with other words from the first token on.
    assert agreement["q8_0"] >= 0.15
    assert all(tok(a).input_ids[:2] == tok(b).input_ids[:2] for a, b in zip(want, answers["q8_0"])), answers


def test_export_refuses_what_it_cannot_do(home, tmp_path):
    r = run_cli("export", "no-run", "--format", "gguf", env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 1 and "no finished merged model" in r.stderr
    r = run_cli("export", "no-run", "--format", "trl", env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 1 and "give --out FILE" in r.stderr
