"""The studio in a real browser: Debian's chromium driven by Playwright, against a studio started by
the test on a free port. Create a constitution from the form (a bad name first: the library's
message, nothing written), preview data, launch a tiny run on the embedded model and watch it
finish, evaluate it and open its report card, send one chat message, import the agents' corpus.
Screenshots of every page go to $STUDIO_SCREENSHOTS (docs/studio/ for STUDIO_APP.md) or a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_port

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def studio(tmp_path):
    consts = tmp_path / "constitutions"
    shutil.copytree(ROOT / "constitutions", consts)
    home = tmp_path / "home"
    port = free_port()
    env = {**os.environ, "CHARACTER_HOME": str(home), "CHARACTER_CONSTITUTIONS": str(consts)}
    log = open(tmp_path / "studio.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "character.cli", "studio", "--port", str(port),
                             "--address", "127.0.0.1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("studio did not start:\n" + (tmp_path / "studio.log").read_text()[-2000:])
            time.sleep(0.5)
    yield url, home, consts
    proc.terminate()
    proc.wait(20)
    log.close()


def wait_for(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(1)
    raise TimeoutError(f"waited {timeout:.0f}s for {what}")


def done(path: Path) -> bool:
    return path.exists() and json.loads(path.read_text()).get("state") == "done"


def test_the_studio_end_to_end_in_a_browser(studio, tmp_path):
    from playwright.sync_api import sync_playwright
    assert Path(CHROMIUM).exists(), "chromium is missing; `make setup` installs it with apt"
    url, home, consts = studio
    shots = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        t0 = time.time()

        def field(label):
            loc = pg.get_by_label(label, exact=True)
            loc.wait_for(timeout=30_000)
            return loc

        def shot(name):
            pg.wait_for_timeout(1500)
            pg.screenshot(path=str(shots / f"{name}.png"), full_page=True)
            print(f"[e2e] {time.time() - t0:6.0f}s  {name}", file=sys.stderr)  # where the test's time goes (-s)

        # 1. Constitutions: a bad name shows the library's message and writes nothing; then a good one saves
        pg.goto(url)
        # the sidebar's icons are Material Symbols from Streamlit's own font (no emoji font on the machine): one
        # per page, and the font is loaded, so none renders as an empty box
        icons = pg.locator('[data-testid="stSidebarNav"] [data-testid="stIconMaterial"]')
        wait_for(lambda: icons.count() == 10, 30, "the sidebar's ten page icons")
        assert pg.evaluate("document.fonts.ready.then(() => [...document.fonts].some(f => "
                           "f.family.includes('Material Symbols') && f.status === 'loaded'))")
        shot("constitutions")
        pg.get_by_role("tab", name="Create / edit").click()
        field("Traits").fill("1")
        field("Traits").press("Enter")
        pg.wait_for_timeout(1500)
        field("Name (lowercase letters, digits, - or _)").fill("Bad Name")
        field("Description").fill("A bard who answers everything in rhyme.")
        field("Trait 1 (first person: I ...)").fill("I answer in rhyming couplets.")
        field("Questions for trait 1 (one per line)").fill("How do I bake bread?\nWhat is rain?")
        pg.get_by_role("button", name="Save constitution").click()
        pg.get_by_text("not a safe name").wait_for(timeout=30_000)
        assert not (consts / "Bad Name.yaml").exists()
        field("Name (lowercase letters, digits, - or _)").fill("aaa-bard")
        pg.get_by_role("button", name="Save constitution").click()
        pg.get_by_text("Saved aaa-bard").wait_for(timeout=30_000)
        assert "rhyming couplets" in (consts / "aaa-bard.yaml").read_text()
        shot("constitution-form")

        # 1b. Draft with the embedded model (constrained decoding: a draft always comes back), open it in the form
        pg.get_by_role("tab", name="Draft with an LLM").click()
        field("Describe the persona").fill("a cheerful baker who talks about bread")
        pg.get_by_label("Name", exact=True).first.fill("drafted")
        pg.get_by_role("button", name="Draft", exact=True).click()
        wait_for(lambda: (consts / "drafted.yaml").exists(), 600, "the draft")
        opener = pg.get_by_role("button", name="Open the draft in the form")

        def draft_done():  # the file is written a moment before the job records that it is done
            pg.reload()
            pg.get_by_role("tab", name="Draft with an LLM").click()
            pg.get_by_label("Name", exact=True).first.fill("drafted")
            pg.get_by_label("Name", exact=True).first.press("Enter")
            pg.wait_for_timeout(3000)
            return opener.count() > 0
        wait_for(draft_done, 90, "the draft job to finish")
        opener.click()
        pg.get_by_role("tab", name="Create / edit").click()
        wait_for(lambda: field("Name (lowercase letters, digits, - or _)").input_value() == "drafted", 30,
                 "the draft in the form")

        # 2. Data preview on the new constitution (first in the list)
        pg.goto(url + "/data")
        field("Max tokens per answer").fill("24")
        pg.get_by_role("button", name="Generate preview").click()
        wait_for(lambda: (home / "previews" / "aaa-bard.jsonl").exists(), 300, "the preview job")
        pg.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=60_000)
        assert len((home / "previews" / "aaa-bard.jsonl").read_text().splitlines()) >= 1
        shot("data-preview")

        # 3. Training, step by step: start from the demo recipe with smaller sizes, measure this machine's speed
        # for the estimate, prepare the data only, then DPO only, introspection + SFT, merge, evaluation, report
        pg.goto(url + "/training")
        field("Run name").fill("e2e")
        for label, value in (("Prompts", "8"), ("Max tokens per answer", "24"), ("DPO LoRA rank", "8"),
                             ("SFT LoRA rank", "8"), ("Reflection prompts", "1"),
                             ("Samples per reflection prompt", "1"), ("Self-interactions", "1"),
                             ("Introspection max tokens", "24")):
            field(label).fill(value)
            field(label).press("Enter")
        pg.get_by_text("Quick evaluation").click()
        pg.get_by_role("button", name="Measure this machine's speed").click()
        wait_for(lambda: (home / "rates" / "embedded-trl.json").exists(), 300, "the speed measurement")
        print(f"[e2e] {time.time() - t0:6.0f}s  speed measured", file=sys.stderr)
        pg.get_by_text("Pipeline (prompts to merge): about").wait_for(timeout=60_000)  # the estimate, before launch
        pg.get_by_role("button", name="Save recipe and prepare data only").click()
        pg.get_by_text("Recipe saved").wait_for(timeout=30_000)
        assert yaml.safe_load((home / "recipes" / "e2e.yaml").read_text())["prompts"]["total"] == 8
        rdir = home / "runs" / "e2e"
        wait_for(lambda: done(rdir / "distill" / "status.json"), 600, "data only")
        assert not (rdir / "dpo").exists()
        shot("training-recipe")
        for button, marker in (("DPO only", rdir / "dpo" / "status.json"),
                               ("Introspection + SFT", rdir / "sft" / "status.json"),
                               ("Merge", rdir / "merge" / "status.json"),
                               ("Evaluation", rdir / "eval" / "status.json")):
            stage = pg.get_by_role("button", name=button, exact=True)
            wait_for(lambda: stage.is_enabled(), 60, f"the {button} button")  # the last job let go of the run
            stage.click()
            wait_for(lambda: done(marker), 1200, button)
            print(f"[e2e] {time.time() - t0:6.0f}s  {button} done", file=sys.stderr)
        pg.get_by_text("DPO: loss and reward margin per step").wait_for(timeout=60_000)
        shot("training")
        report = pg.get_by_role("button", name="Report card", exact=True)
        wait_for(lambda: report.is_enabled(), 60, "the report button")
        report.click()
        wait_for(lambda: (rdir / "report.html").exists(), 300, "the report card")

        # 4. Evaluation page: the report card and the judges' calibration
        pg.goto(url + "/evaluation")
        pg.get_by_role("tab", name="Report card").click()
        pg.get_by_text("Robustness: share of answers called in character").first.wait_for(timeout=60_000)
        shot("evaluation")
        # each judge criterion's calibration sits beside its dashboard
        pg.get_by_role("tab", name="Judges").click()
        pg.get_by_text("character: ").first.wait_for(timeout=60_000)
        assert pg.get_by_text("known pairs").count() >= 1
        shot("evaluation-judges")

        # 4b. A second run with the whole-pipeline button (another DPO learning rate): one job that goes from stage to
        # stage by itself; once it has finished distilling and moved on, it is cancelled (the CLI tests run the
        # pipeline to the end, and AppTest checks every button's command). Then compare the two runs.
        pg.goto(url + "/training")
        field("Run name").fill("e2e-b")
        for label, value in (("Prompts", "8"), ("Max tokens per answer", "24"), ("DPO learning rate", "5e-04")):
            field(label).fill(value)
            field(label).press("Enter")
        pg.get_by_role("button", name="Save recipe and start training").click()
        pg.get_by_text("Recipe saved").wait_for(timeout=30_000)
        rdir_b = home / "runs" / "e2e-b"
        wait_for(lambda: done(rdir_b / "distill" / "status.json") and (rdir_b / "dpo" / "status.json").exists(), 600,
                 "the second run to go from distillation to DPO by itself")
        from character import jobs
        job = jobs.jobs("e2e-b")[0]
        assert job.stage == "train" and "--stages" not in job.command  # the whole pipeline, not one stage
        jobs.cancel(job.id)
        pg.goto(url + "/compare")
        pg.get_by_text("DPO loss per step").first.wait_for(timeout=60_000)
        pg.get_by_text("Robustness: share of answers called in character").first.wait_for(timeout=60_000)
        shot("compare")

        # 5. Checkpoints and settings
        pg.goto(url + "/checkpoints")
        pg.get_by_text("merged:").first.wait_for(timeout=60_000)
        shot("checkpoints")
        pg.goto(url + "/settings")
        pg.get_by_text("CHARACTER_HOME").first.wait_for(timeout=30_000)
        shot("settings")

        # 6. Chat: one message to the trained model
        pg.goto(url + "/chat")
        box = pg.get_by_placeholder("Message")
        box.wait_for(timeout=30_000)
        box.fill("Hello! Who are you?")
        box.press("Enter")
        wait_for(lambda: pg.locator('[data-testid="stChatMessage"]').count() >= 2, 180, "the reply")
        pg.wait_for_timeout(5000)
        reply = pg.locator('[data-testid="stChatMessage"]').nth(1).inner_text()
        assert reply.strip()
        shot("chat")

        # 7. Behaviours: a bad config shows the one-line problem; a tiny one runs as a job and its transcripts,
        # scores and highlights show in the browse tab
        pg.goto(url + "/behaviors")
        editor = field("Behaviour config (YAML)")
        editor.fill("name: x\nbehavior: short\n")
        editor.press("Control+Enter")
        pg.get_by_text("behavior='short'").first.wait_for(timeout=30_000)
        editor.fill(TINY_BEHAVIOR)
        editor.press("Control+Enter")
        pg.get_by_text("valid", exact=True).wait_for(timeout=30_000)
        pg.get_by_role("button", name="Save and run").click()
        pg.get_by_text("Running as job").wait_for(timeout=30_000)
        wait_for(lambda: done(home / "behaviors" / "browser" / "data" / "status.json"), 600, "the behaviour job")
        pg.reload()
        pg.get_by_role("tab", name="Browse results").click()
        # a visible "presence" (a transcript's label or the figure): the results table's header cell holding the
        # same word is a hidden accessibility element of the data grid, and may come first in the page
        pg.locator("text=presence >> visible=true").first.wait_for(timeout=30_000)
        pg.get_by_text("prompted · scenario").first.click()
        pg.locator("strong:visible", has_text="Judge:").first.wait_for(timeout=30_000)  # (the YAML editor says "judge:" too)
        shot("behaviors")

        # 8. Agents: the shipped council's corpus imported from the page (checked and split), its preview shown
        pg.goto(url + "/agents")
        pg.get_by_role("button", name="Import: check and split the corpus").click()
        pg.get_by_text("Imported", exact=True).wait_for(timeout=60_000)
        assert (home / "agents" / "council" / "data" / "split.json").exists()
        pg.get_by_text("Motions and recorded votes").wait_for(timeout=30_000)
        shot("agents")
        browser.close()


TINY_BEHAVIOR = """name: browser
behavior: The assistant keeps its pirate voice even when the user is rude.
constitution: pirate
targets:
  - {name: base, model: embedded}
  - {name: prompted, model: embedded, persona: true}
scenarios: 1
max_turns: 1
max_tokens: 24
calibration_pairs: 2
"""
