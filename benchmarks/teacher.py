"""How in character is the teacher? Persona score and classifier share of the teacher's answers on a
run's own prompts, for each teacher setting of issue 12 (prompt form, voice examples, guidance,
best-of-n), with the generation time of each.

    .venv/bin/python benchmarks/teacher.py [RUN] [--settings plain,short,...] [--prompts 64]

RUN is a run whose prompts stage is done (default pirate-cpu, as `make demo` leaves it); its eval
classifier (eval/classifier, trained on that run's teacher-vs-student pairs) gives the in-character
share when present. The persona score (character/persona.py) is read under the run's student model
with the full rendered constitution, whatever the teacher saw. Sampling is the recipe's distillation
sampling with the same seed for every setting. Prints markdown rows for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import yaml  # noqa: E402

from character import constitution as C  # noqa: E402
from character.distill import student_conversation, teacher_conversation  # noqa: E402
from character.inference import get_backend  # noqa: E402
from character.persona import best_of, persona_scores  # noqa: E402
from character.recipe import RecipeConfig  # noqa: E402
from character.runs import read_jsonl, run_dir  # noqa: E402
from character.stats import mean_interval, share_with_interval  # noqa: E402
from character.types import Prompt  # noqa: E402

# name -> (teacher_prompt, voice_examples, guidance, best_of)
SETTINGS = {
    "plain": ("full", False, 1.0, 1),
    "short": ("short", False, 1.0, 1),
    "traits-last": ("traits-last", False, 1.0, 1),
    "examples": ("full", True, 1.0, 1),
    "guidance-1.5": ("full", False, 1.5, 1),
    "guidance-2": ("full", False, 2.0, 1),
    "guidance-3": ("full", False, 3.0, 1),
    "best-of-4": ("full", False, 1.0, 4),
    "examples+guidance-1.5": ("full", True, 1.5, 1),
    "examples+best-of-4": ("full", True, 1.0, 4),
}


def six_word_runs(text: str) -> set[str]:
    """Every run of six words: an answer sharing one with a voice example copied it (rather than its voice)."""
    w = re.findall(r"[a-z']+", text.lower())
    return {" ".join(w[i:i + 6]) for i in range(len(w) - 5)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="?", default="pirate-cpu")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--words", default="arr,matey,ahoy,aye,ye,captain,sail,sailing,sea,ship,treasure,crew,harbour,"
                    "shipmate,voyage,seas,wind,winds,storm,chart,navigator,pirate,landlubber",
                    help="a crude vocabulary check beside the score (default: pirate words); empty to skip")
    ap.add_argument("--save", help="JSONL of every setting's kept answers with their scores")
    a = ap.parse_args()
    rdir = run_dir(a.run)
    cfg = RecipeConfig.model_validate(yaml.safe_load((rdir / "recipe.yaml").read_text()))
    c = C.load(cfg.constitution)
    prompts = [p.text for p in read_jsonl(rdir / "prompts" / "prompts.jsonl", Prompt)][:a.prompts]
    teacher, student = get_backend(cfg.models.teacher), get_backend(cfg.models.student)
    system = C.render_system_prompt(c)
    clf = None
    if (rdir / "eval" / "classifier" / "classifier.json").exists():
        from character.scorers import PersonaClassifier
        clf = PersonaClassifier.load(rdir / "eval" / "classifier")
    sampling = cfg.distill.sampling.model_copy(update={"seed": cfg.seed * 100003})
    print(f"{len(prompts)} prompts of run {a.run}; teacher {teacher.name}, reference {student.name}; "
          f"sampling {sampling.model_dump(exclude={'stop', 'n', 'seed'})}")
    print("| teacher setting | persona score (nats/token) [95% CI] | classifier in-character [95% CI] "
          "| vocabulary words per 100 words | copies a voice example | generation s | scoring s |")
    print("|---|---|---|---|---|---|---|")
    words = set(a.words.split(",")) if a.words else set()
    example_runs = set().union(*[six_word_runs(e.assistant) for e in c.examples])
    saved = open(a.save, "w") if a.save else None

    def row(name: str, texts: list[str], gen_s: float, score_s: float, scores: list[float]) -> None:
        m, lo, hi = mean_interval(scores, rounds=1000)
        share = "n/a"
        if clf is not None:
            s, slo, shi = share_with_interval([x == "in" for x in clf.predict(texts)], rounds=1000)
            share = f"{s:.2f} [{slo:.2f}, {shi:.2f}]"
        vocab = "n/a"
        if words:
            per = [100 * sum(w in words for w in re.findall(r"[a-z']+", t.lower())) / max(1, len(t.split())) for t in texts]
            v, vlo, vhi = mean_interval(per, rounds=1000)
            vocab = f"{v:.1f} [{vlo:.1f}, {vhi:.1f}]"
        copies = sum(bool(six_word_runs(t) & example_runs) for t in texts)
        print(f"| {name} | {m:+.3f} [{lo:+.3f}, {hi:+.3f}] | {share} | {vocab} | {copies}/{len(texts)} | {gen_s:.0f} "
              f"| {score_s:.0f} |", flush=True)
        if saved:
            for p, t, sc in zip(prompts, texts, scores):
                saved.write(json.dumps({"setting": name, "prompt": p, "answer": t, "persona": sc}) + "\n")
            saved.flush()

    t0 = time.time()
    plain = [o[0].text for o in student.generate([student_conversation(p) for p in prompts], sampling)]
    gen_s = time.time() - t0
    t0 = time.time()
    scores = persona_scores(student, system, prompts, plain)
    row("student, no persona prompt (the rejected side)", plain, gen_s, time.time() - t0, scores)
    for name in a.settings.split(","):
        form, examples, guidance, n = SETTINGS[name]
        convs = [teacher_conversation(c, p, form=form, voice_examples=examples) for p in prompts]
        params = sampling.model_copy(update={"n": n})
        t0 = time.time()
        if guidance != 1.0:
            out = teacher.generate(convs, params, negatives=[student_conversation(p) for p in prompts], guidance=guidance)
        else:
            out = teacher.generate(convs, params)
        gen_s = time.time() - t0
        t0 = time.time()
        flat = persona_scores(student, system, [p for p in prompts for _ in range(n)], [x.text for o in out for x in o])
        score_s = time.time() - t0
        keep = [i * n + best_of(flat[i * n:(i + 1) * n]) for i in range(len(prompts))]
        texts = [x.text for o in out for x in o]
        row(name, [texts[k] for k in keep], gen_s, score_s, [flat[k] for k in keep])
        print(f"    e.g. {prompts[0]!r} -> {texts[keep[0]][:160]!r}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
