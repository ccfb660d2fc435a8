"""Shared fixtures: the real embedded model, a real llama.cpp OpenAI-compatible server on
loopback, and an isolated CHARACTER_HOME per test (the model cache is shared across tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("CHARACTER_MODELS", str(ROOT / "data" / "models"))
os.environ.setdefault("CHARACTER_CONSTITUTIONS", str(ROOT / "constitutions"))
for _var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TINKER_API_KEY", "TOGETHER_API_KEY", "TOGETHER_BASE_URL",
             "CHARACTER_TEACHER_MODEL",
             "CHARACTER_STUDENT_MODEL", "CHARACTER_JUDGE_MODEL"):
    os.environ.pop(_var, None)  # tests never reach a remote API, whatever the shell has set
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on the two cores: one math thread each, inherited by the commands and
    # the studio they start (torch's default of a thread per core would put four busy threads on two cores)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

# Tests that share an expensive fixture run on one worker (`--dist loadgroup`), so it is built once:
# fixture -> group. The longest groups start first, so that neither worker is left with a long tail.
SHARED = {"tiny_run": "tiny", "trained": "agents", "dpo_run": "training"}
FIRST = ("test_studio_e2e.py", "tiny", "agents", "training")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    def group(item):
        return next((g for f, g in SHARED.items() if f in item.fixturenames), None)

    def rank(item):
        key = group(item) or item.path.name
        return FIRST.index(key) if key in FIRST else len(FIRST)

    for item in items:
        if group(item):
            item.add_marker(pytest.mark.xdist_group(group(item)))
    items.sort(key=rank)  # stable: the order within each rank is pytest's own


def pytest_configure(config):
    """pytest-xdist 3.8 groups tests (`--dist loadgroup`) by renaming `item._nodeid`, which pytest 9.2 no longer
    reads: the groups would be ignored and the shared runs built on both workers. Stop with the fix instead."""
    from packaging.version import Version
    if config.getoption("dist", "no") == "loadgroup" and Version(pytest.__version__) >= Version("9.2"):
        raise pytest.UsageError(f"pytest {pytest.__version__} ignores pytest-xdist's test groups; install the "
                                "versions pyproject.toml's dev extra names: pip install -e '.[dev]'")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARACTER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="session")
def embedded():
    from character.inference import get_backend
    return get_backend("embedded")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A real OpenAI-compatible server (llama-cpp-python) serving the embedded GGUF."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python[server] is installed by `make setup`")
    from character.inference.embedded import gguf_path

    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()),
                                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                                 "--model_alias", "smollm2"], stdout=f, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/models", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("llama.cpp server did not start:\n" + log.read_text()[-2000:])
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


TINY = {
    "name": "tiny", "constitution": "pirate", "seed": 1,
    "prompts": {"total": 16, "mix": {"constitution": 0.75, "generic": 0.25}},
    "distill": {"batch_size": 4, "heldout": 0.25, "drop_truncated": False,
                "sampling": {"max_tokens": 48, "temperature": 0.7, "repetition_penalty": 1.1}},
    "dpo": {"rank": 8, "alpha": 16, "lr": 5e-4, "nll": 1.0, "epochs": 2, "batch_size": 6, "max_length": 160,
            "warmup_ratio": 0.0},
    "introspect": {"reflection_prompts": 2, "samples_per_prompt": 1, "interactions": 1, "turns": 3,
                   "sampling": {"max_tokens": 40, "temperature": 0.7}},
    "sft": {"rank": 8, "alpha": 16, "lr": 5e-4, "epochs": 2, "batch_size": 2, "max_length": 256,
            "warmup_ratio": 0.0},
    "eval": {"prompts": 2, "max_tokens": 16, "preference_prompts": 2, "conditions": ["feel", "random"],
             "rubric_answers": 1, "conversations": 1, "bootstrap_rounds": 20, "calibration_pairs": 4,
             "retention_prompts": 3},
}


def write_recipe(folder: Path, **changes) -> Path:
    import yaml
    data = {**TINY, **changes}
    p = folder / f"{data['name']}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny recipe run once through every stage and the evaluation, uninterrupted; shared by the
    pipeline test and the reliability tests (which compare an interrupted run with it)."""
    base = tmp_path_factory.mktemp("tiny")
    home = base / "home"
    spec = write_recipe(base)
    r = run_cli("run", str(spec), env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-3000:]
    ev = run_cli("eval", "tiny", env={"CHARACTER_HOME": str(home)})
    return {"home": home, "recipe": spec, "run": r, "eval": ev}


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `character` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "character.cli", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=1800)  # a hang guard, not a speed test


class Scripted:
    """A fake backend that replays answers in order and records what it was asked (unit tests only)."""
    name = "fake/scripted"
    supports_logprobs = False
    supports_prefill = False

    def __init__(self, answers):
        from character.types import Completion
        self._completion = Completion
        self.answers = list(answers)
        self.calls = []
        self.params = []

    def generate(self, conversations, params, json_schema=None):
        self.calls.append((conversations, json_schema))
        self.params.append(params)
        return [[self._completion(text=self.answers.pop(0))] for _ in conversations]
