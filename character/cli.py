"""The `character` command. One subcommand per stage; user errors print one line and exit 1.

    character constitution list | show NAME | validate PATH... | import PATH | draft "DESCRIPTION"
    character run RECIPE [RECIPE ...] [--stages ...] [--parallel N] [--restart] [--set key=value ...]
    character prompts|distill|introspect|merge RECIPE;  character train dpo|sft RECIPE
    character chat [RUN_OR_MODEL] [--compare base] [--system TEXT | --constitution NAME] [-m MESSAGE]
    character report RUN;  character export RUN --format trl|openai-sft|openai-dpo|together --out FILE
    character export RUN --format gguf [--quant f32|f16|q8_0]
    character studio

Each command is a `cmd_*` function; the `add_*` function after it registers it and its arguments, and
`build_parser` calls those in the order `character --help` lists the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

import yaml

from . import behaviors as B
from . import constitution as C
from . import log
from .agents import alignment as agents_alignment
from .agents import cohort
from .agents import completions as agents_completions
from .agents import measure as agents_measure
from .agents import profiles as agents_profiles
from .agents import report as agents_report
from .agents import review as agents_review
from .agents import train as agents_train
from .conversations import ContextSet, generate_contexts, run_conversations
from .distill import EXPORTERS, make_pairs
from .errors import CharacterError
from .estimate import LOCAL_BACKENDS, cached_rates, estimate, measure, pipeline_total
from .evaluate import SECTIONS, format_summary, perplexity
from .evaluate import run as run_evaluation
from .gguf_export import export_gguf
from .inference import get_backend
from .log import say
from .persona import scorer_for
from .pipeline import check_distinct_runs, run_parallel, run_recipe, summary
from .prompts import build_prompts
from .ratings import bootstrap, elo
from .recipe import STAGES, RecipeError, load_recipe, recipe_of_run
from .report import run_summary, write_report
from .runs import (
    SLUG,
    character_home,
    check_slug,
    read_json,
    read_jsonl,
    read_status,
    run_dir,
    run_lock,
    runs_root,
    write_atomic,
    write_jsonl,
)
from .scorers import PersonaClassifier
from .settings import default_model, load_env
from .types import Match, Message, PreferencePair, SamplingParams, stable_id

# -- constitution ------------------------------------------------------------------------------

def cmd_constitution_list(args) -> int:
    names = C.list_names()
    if not names:
        print(f"no constitutions in {C.constitutions_dir()}")
    for name in names:
        try:
            c = C.load(name)
            print(f"{name:24} {len(c.traits):2} traits  {c.description[:70]}")
        except CharacterError as e:
            print(f"{name:24} INVALID  {e}")
    return 0


def cmd_constitution_show(args) -> int:
    c = C.load(args.target)
    print(C.dump(c, args.format), end="")
    if args.prompt:
        print("\n# teacher system prompt\n" + C.render_system_prompt(c))
    return 0


def cmd_constitution_validate(args) -> int:
    targets = ([args.target] if args.target else []) + list(args.targets)
    targets = targets or [str(p) for p in sorted(C.constitutions_dir().glob("*")) if p.suffix in C.SUFFIXES]
    bad = 0
    for t in targets:
        try:
            c = C.load(t)
            print(f"ok  {t}: {len(c.traits)} traits, {len(c.questions)} questions")
        except CharacterError as e:
            bad += 1
            print(f"error: {e}", file=sys.stderr)
    return 1 if bad else 0


def cmd_constitution_import(args) -> int:
    c = C.import_trait_list(Path(args.target), name=args.name)
    out = Path(args.out) if args.out else C.constitutions_dir() / f"{c.name}.yaml"
    if out.exists() and not args.force:  # before any model call: nothing is written or spent on a clash
        raise CharacterError(f"out={str(out)!r}: file exists; choose another --out or --name, or pass --force")
    bare = [t for t in c.traits if not t.questions]
    if bare and args.model:
        say(f"writing {args.questions} questions for each of {len(bare)} traits with {args.model} ...")
        c = C.fill_questions(c, get_backend(args.model), args.questions, args.seed)
    out = C.save(c, out, overwrite=args.force)
    print(f"wrote {out} ({len(c.traits)} traits, {len(c.questions)} questions)")
    if bare and not args.model:
        print(f"note: {len(bare)} of {len(c.traits)} traits have no questions; a run writes prompts.expand_per_trait "
              "questions for each with the recipe's teacher at the prompts stage (or import again with --model "
              "to write them now)")
    return 0


def cmd_constitution_draft(args) -> int:
    if args.out:
        out = Path(args.out)
        if out.exists() and not args.force:
            raise CharacterError(f"out={args.out!r}: file exists; choose another path or pass --force")
    spec = args.model or default_model("teacher")
    say(f"drafting with {spec} ...")
    c = C.draft_constitution(args.target, get_backend(spec), name=args.name, n_traits=args.traits,
                             n_questions=args.questions, seed=args.seed)
    out = C.save(c, Path(args.out) if args.out else None, overwrite=args.force)
    print(f"wrote {out} ({len(c.traits)} traits)")
    return 0


CONSTITUTION_ACTIONS = {"list": cmd_constitution_list, "show": cmd_constitution_show,
                        "validate": cmd_constitution_validate, "import": cmd_constitution_import,
                        "draft": cmd_constitution_draft}


def cmd_constitution(args) -> int:
    """The action is a positional choice (one parser, one help page), so it is dispatched here."""
    if args.action not in ("list", "validate") and not args.target:
        print(f"error: constitution {args.action} needs an argument (see --help)", file=sys.stderr)
        return 2
    return CONSTITUTION_ACTIONS[args.action](args)


def add_constitution(sub) -> None:
    c = sub.add_parser("constitution", help="list, show, validate, import or draft constitutions")
    c.add_argument("action", choices=list(CONSTITUTION_ACTIONS))
    c.add_argument("target", nargs="?", help="NAME (show), PATH (import), or DESCRIPTION (draft)")
    c.add_argument("targets", nargs="*", help=argparse.SUPPRESS)
    c.add_argument("--model", help="model spec for draft (default: the teacher model, 'embedded'); for import: "
                   "writes questions for traits that have none")
    c.add_argument("--out", help="output file (default: constitutions/<name>.yaml)")
    c.add_argument("--name", help="name (slug) for the new constitution")
    c.add_argument("--force", action="store_true", help="overwrite an existing file")
    c.add_argument("--format", choices=["yaml", "json"], default="yaml")
    c.add_argument("--prompt", action="store_true", help="show: also print the teacher system prompt")
    c.add_argument("--traits", type=int, default=8, help="draft: number of traits")
    c.add_argument("--questions", type=int, default=5, help="draft, import --model: questions per trait")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_constitution)


# -- chat --------------------------------------------------------------------------------------

def resolve_chat_target(target: str | None) -> tuple[str, dict, str]:
    """(model spec, backend options, base spec) for a run name or a model spec."""
    if target and SLUG.match(target) and target != "embedded" and (runs_root() / target).is_dir():
        rdir = runs_root() / target
        base = "embedded"
        try:
            base = recipe_of_run(rdir).models.student
        except RecipeError:  # a folder made by hand, or a recipe from an older version: its student as written
            raw = yaml.safe_load((rdir / "recipe.yaml").read_text()) if (rdir / "recipe.yaml").is_file() else None
            base = ((raw or {}).get("models") or {}).get("student", base) if isinstance(raw, dict) else base
        if (rdir / "merge" / "model" / "config.json").exists():
            return f"hf/{rdir / 'merge' / 'model'}", {}, base
        adapters = [str(rdir / k / "adapter") for k in ("dpo",) if (rdir / k / "adapter").exists()]
        if adapters:
            return base, {"adapters": adapters}, base
        raise CharacterError(f"run={target!r}: no trained model yet; run `character run` to the dpo stage first")
    spec = target or default_model("student")
    return spec, {}, spec


def cmd_chat(args) -> int:
    spec, options, base_spec = resolve_chat_target(args.target or args.model)
    if args.adapter:
        options["adapters"] = args.adapter
    system = args.system
    if args.constitution:
        system = C.render_system_prompt(C.load(args.constitution))
    backend = get_backend(spec, **options)
    compare = get_backend(base_spec) if args.compare == "base" else None
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    history: list[Message] = [Message(role="system", content=system)] if system else []
    base_history = list(history)
    messages = [args.message] if args.message else None
    while True:
        if messages is not None:
            if not messages:
                return 0
            text = messages.pop(0)
            print(f"you> {text}")
        else:
            try:
                text = input("you> ").strip()
            except EOFError:
                return 0
            if text in ("", "/quit", "/exit"):
                return 0
        _turn(backend, history, text, params, "bot" if compare is None else "trained")
        if compare is not None:
            _turn(compare, base_history, text, params, "base")


def _turn(backend, history: list, text: str, params, label: str) -> None:
    """Send one user message, stream the reply to the terminal, and keep both in `history`.
    A stream that breaks midway keeps what arrived and says so."""
    history.append(Message(role="user", content=text))
    print(f"{label}> ", end="", flush=True)
    reply = ""
    try:
        for piece in backend.stream(history, params):
            reply += piece
            print(piece, end="", flush=True)
    except CharacterError as e:
        print(f"\n[{e}; the {len(reply)} characters that arrived are kept]", file=sys.stderr, end="")
    print()
    history.append(Message(role="assistant", content=reply.strip()))


def add_chat(sub) -> None:
    ch = sub.add_parser("chat", help="chat with a trained run or any model, optionally beside the base model")
    ch.add_argument("target", nargs="?", help="RUN name or model spec (default: the student model, 'embedded')")
    ch.add_argument("--model", help="model spec (same as giving it as TARGET)")
    ch.add_argument("--compare", choices=["base"], help="also show the base model's answer")
    ch.add_argument("--system", help="system prompt text")
    ch.add_argument("--constitution", help="use this constitution as the system prompt")
    ch.add_argument("--adapter", action="append", help="PEFT adapter folder to apply (repeatable)")
    ch.add_argument("-m", "--message", help="send one message and exit")
    ch.add_argument("--max-tokens", type=int, default=256)
    ch.add_argument("--temperature", type=float, default=0.7)
    ch.add_argument("--seed", type=int, default=None)
    ch.set_defaults(func=cmd_chat)


# -- pipeline: run, one stage, estimate --------------------------------------------------------

def cmd_run(args) -> int:
    if isinstance(args.restart, str) and args.restart not in STAGES and Path(args.restart).is_file():
        args.recipes, args.restart = [args.restart, *args.recipes], True  # `run --restart RECIPE`: a plain --restart
    cfgs = [load_recipe(r, args.set) for r in args.recipes]  # validate every recipe before starting any
    check_distinct_runs(cfgs, args.recipes)
    if len(cfgs) > 1 and args.parallel > 1:
        restart = [] if not args.restart else ["--restart"] if args.restart is True else [f"--restart={args.restart}"]
        extra = [*(["--stages", *args.stages] if args.stages else []), *restart,
                 *(["--set", *args.set] if args.set else [])]
        return run_parallel(args.recipes, extra, args.parallel)
    for cfg in cfgs:
        outcome = run_recipe(cfg, args.stages, args.restart, say=say)
        print(summary(outcome))
    return 0


def cmd_stage(args) -> int:
    """One stage: `prompts|distill|introspect|merge RECIPE` or `train dpo|sft RECIPE`."""
    stage = args.command if args.command != "train" else args.kind
    cfg = load_recipe(args.recipe, args.set)
    outcome = run_recipe(cfg, [stage], args.restart, say=say)
    print(summary(outcome))
    return 0


def add_pipeline(sub) -> None:
    r = sub.add_parser("run", help="run a recipe's stages in order (resumes; skips finished stages)")
    r.add_argument("recipes", nargs="*", help="recipe YAML file(s)")
    r.add_argument("--stages", nargs="+", help="only these stages (prompts distill dpo introspect sft merge)")
    r.add_argument("--parallel", type=int, default=1, help="run several recipes as parallel processes")
    r.add_argument("--restart", nargs="?", const=True, default=False, metavar="STAGE",
                   help="redo STAGE (default: the first chosen stage) and every stage after it")
    r.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides, e.g. dpo.lr=1e-4")
    r.set_defaults(func=cmd_run)

    for name, helptext in (("prompts", "build the prompt mix"), ("distill", "teacher vs student preference pairs"),
                           ("introspect", "self-reflection and self-interaction SFT data"),
                           ("merge", "combine DPO and SFT adapters; export adapter and merged model")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("recipe")
        sp.add_argument("--restart", action="store_true", help="redo this stage and every stage after it")
        sp.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
        sp.set_defaults(func=cmd_stage)
    t = sub.add_parser("train", help="train the dpo or sft LoRA adapter")
    t.add_argument("kind", choices=["dpo", "sft"])
    t.add_argument("recipe")
    t.add_argument("--restart", action="store_true", help="redo this stage and every stage after it")
    t.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    t.set_defaults(func=cmd_stage)


def cmd_estimate(args) -> int:
    if not args.recipe:  # only measure (and cache) a model's rates
        measure(args.model, "trl")
        return 0
    cfg = load_recipe(args.recipe, args.set)
    rates = cached_rates(cfg.models.student, cfg.dpo.backend)
    if cfg.dpo.backend in LOCAL_BACKENDS and (args.measure or rates is None):
        rates = measure(cfg.models.student, cfg.dpo.backend)
    rows = estimate(cfg, rates)
    for r in rows:
        secs = "-" if r["estimate_s"] is None else f"{r['estimate_s'] // 60}:{r['estimate_s'] % 60:02d}"
        print(f"{r['stage']:<11} {secs:>6}  {r['basis']}")
    total, _, missing = pipeline_total(rows)
    print(f"pipeline    {total // 60}:{total % 60:02d}  (prompts to merge; eval on its own"
          + (f"; {missing} stages not estimated)" if missing else ")"))
    return 0


def add_estimate(sub) -> None:
    es = sub.add_parser("estimate", help="time per stage for a recipe on this machine (measures its rates once)")
    es.add_argument("recipe", nargs="?", help="recipe YAML (without one: measure --model's rates and stop)")
    es.add_argument("--model", default="embedded", help="without a recipe: the model to measure")
    es.add_argument("--measure", action="store_true", help="measure the rates again")
    es.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides, e.g. prompts.total=32")
    es.set_defaults(func=cmd_estimate)


# -- data: preview, contexts, conversations ----------------------------------------------------

def cmd_preview(args) -> int:
    c = C.load(args.constitution)
    mix = {}
    for part in args.mix.split(","):
        k, _, v = part.partition("=")
        try:
            mix[k.strip()] = float(v)
        except ValueError:
            raise CharacterError(f"mix={args.mix!r}: write source=share pairs, e.g. constitution=0.5,generic=0.5") from None
    unknown = set(mix) - {"constitution", "templates", "generic"}
    if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise CharacterError(f"mix={args.mix!r}: the shares must be 0 or more and add up to more than 0; "
                             "e.g. constitution=0.5,generic=0.5")
    if unknown or not 2 <= args.n <= 10:
        raise CharacterError(f"mix/n: sources are constitution, templates, generic and n is 2-10 (got {sorted(unknown)}, "
                             f"{args.n})")
    if not 1 <= args.best_of <= 16 or not 0 <= args.guidance <= 10:
        raise CharacterError(f"best_of={args.best_of}, guidance={args.guidance}: best-of is 1-16 and guidance 0-10")
    prompts = build_prompts(c, args.n, mix, seed=args.seed, hint_rate=args.hint_rate)
    student = get_backend(args.student)
    try:  # persona scores under the student, as distillation records them
        scorer = scorer_for(student, args.student, c, args.best_of > 1)
        pairs, filtered = make_pairs(c, prompts, get_backend(args.teacher), student,
                                     SamplingParams(max_tokens=args.max_tokens, temperature=0.7, seed=args.seed,
                                                    repetition_penalty=1.1), drop_truncated=False,
                                     teacher_prompt=args.teacher_prompt, voice_examples=not args.no_voice_examples,
                                     guidance=args.guidance, best_of=args.best_of, scorer=scorer)
    except ValueError as e:
        raise CharacterError(f"best_of={args.best_of}, guidance={args.guidance}: {e}") from None
    write_jsonl(Path(args.out), pairs)
    print(f"{len(pairs)} pairs ({len(filtered)} filtered) written to {args.out}")
    if scorer and pairs:
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        print(f"persona score (nats/token): teacher {mean([p.persona_chosen for p in pairs]):+.3f}, "
              f"student {mean([p.persona_rejected for p in pairs]):+.3f}")
    return 0


def add_preview(sub) -> None:
    pv = sub.add_parser("preview", help="a few prompts answered by teacher (in character) and student, side by side")
    pv.add_argument("constitution")
    pv.add_argument("--n", type=int, default=4, help="prompts, 2-10")
    pv.add_argument("--teacher", default=default_model("teacher"))
    pv.add_argument("--student", default=default_model("student"))
    pv.add_argument("--mix", default="constitution=0.5,templates=0.25,generic=0.25")
    pv.add_argument("--hint-rate", type=float, default=0.2)
    pv.add_argument("--max-tokens", type=int, default=96)
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--teacher-prompt", choices=["full", "traits-last", "short"], default="full",
                    help="the teacher's system prompt form (as distill.teacher_prompt)")
    pv.add_argument("--no-voice-examples", action="store_true", help="leave out the constitution's voice examples")
    pv.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (local teachers)")
    pv.add_argument("--best-of", type=int, default=1, help="teacher answers per prompt; keep the most in character")
    pv.add_argument("--out", required=True, help="JSONL of preference pairs")
    pv.set_defaults(func=cmd_preview)


def cmd_contexts(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise CharacterError(f"out={args.out!r}: file exists; choose another path or pass --force")
    spec = args.model or default_model("teacher")
    contexts = generate_contexts(args.theme, args.num_contexts, get_backend(spec), seed=args.seed)
    write_atomic(out, ContextSet(theme=args.theme, model=spec, contexts=contexts).model_dump_json(indent=2))
    print(f"wrote {len(contexts)} contexts to {out}")
    return 0


def add_contexts(sub) -> None:
    cx = sub.add_parser("contexts", help="LLM-written scenario contexts for a theme (JSON)")
    cx.add_argument("--theme", required=True)
    cx.add_argument("--num-contexts", type=int, required=True)
    cx.add_argument("--model", help="model spec (default: the teacher model)")
    cx.add_argument("--out", required=True)
    cx.add_argument("--force", action="store_true")
    cx.add_argument("--seed", type=int, default=0)
    cx.set_defaults(func=cmd_contexts)


def cmd_conversations(args) -> int:
    path = Path(args.context_file)
    if not path.is_file():
        raise CharacterError(f"context_file={args.context_file!r}: no such file; make one with `character contexts`")
    try:
        cset = ContextSet.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CharacterError(f"context_file={path.name!r}: not a contexts file ({str(e).splitlines()[0]})") from None
    user_persona = args.user_persona
    try:  # a file holding the persona, or the persona text itself (which may be too long to be a path)
        if Path(args.user_persona).is_file():
            user_persona = Path(args.user_persona).read_text(encoding="utf-8")
    except OSError:
        pass
    persona = C.load(args.assistant_persona)
    a_spec = args.assistant_model or default_model("teacher")
    u_spec = args.user_model or default_model("teacher")
    made = run_conversations(cset.contexts, persona, user_persona, get_backend(a_spec), get_backend(u_spec),
                             args.num_conversations, args.num_turns, Path(args.out),
                             SamplingParams(max_tokens=args.max_tokens, temperature=0.7, seed=args.seed))
    print(f"wrote {made} new conversations to {args.out}")
    return 0


def add_conversations(sub) -> None:
    cv = sub.add_parser("conversations", help="assistant persona vs simulated user, per scenario context (JSONL)")
    cv.add_argument("--assistant-persona", required=True, help="constitution name or path")
    cv.add_argument("--assistant-model")
    cv.add_argument("--user-persona", required=True, help="system prompt text, or a file holding it")
    cv.add_argument("--user-model")
    cv.add_argument("--context-file", required=True)
    cv.add_argument("--num-conversations", type=int, required=True)
    cv.add_argument("--num-turns", type=int, required=True, help="1 = assistant only, 2 = + user, 3 = + assistant")
    cv.add_argument("--max-tokens", type=int, default=256)
    cv.add_argument("--seed", type=int, default=0)
    cv.add_argument("--out", required=True)
    cv.set_defaults(func=cmd_conversations)


# -- eval: a run's evaluation, perplexity, elo, classifier -------------------------------------

EVAL_TOOLS = ("run", "elo", "classifier", "perplexity")  # any other word after `eval` is a run name


def _read_rows(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise CharacterError(f"data={path!r}: no such file")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise CharacterError(f"{p.name}:{n}: not JSON; each line must be one JSON object") from None
    return rows


def cmd_eval(args) -> int:
    """`eval run RUN` (also `eval RUN`): the whole evaluation of a trained run."""
    print(format_summary(run_evaluation(args.run, seed=args.seed, fresh=args.fresh, sections=args.sections,
                                        prompts=args.prompts, max_tokens=args.max_tokens)))
    print(f"\nthe report card: character report {args.run}")
    return 0


def cmd_eval_perplexity(args) -> int:
    rows = _read_rows(args.data)
    convs = []
    for n, r in enumerate(rows, 1):
        msgs = r.get("messages") if isinstance(r, dict) else None
        if not isinstance(msgs, list) or not any(isinstance(m, dict) and m.get("role") == "assistant"
                                                 for m in msgs):
            raise CharacterError(f"data row {n}: needs \"messages\" with at least one assistant turn")
        try:
            convs.append([Message(role=m["role"], content=m["content"]) for m in msgs])
        except (KeyError, ValueError, TypeError):
            raise CharacterError(f"data row {n}: each message needs a role (system/user/assistant) and "
                                 "content") from None
    for spec in args.model:
        r = perplexity(get_backend(spec), convs)
        print(f"{spec}: perplexity {r['perplexity']:.3f} over {r['tokens']} tokens in {r['turns']} "
              "assistant turns")
    return 0


def cmd_eval_elo(args) -> int:
    if not Path(args.matches).is_file():
        raise CharacterError(f"matches={args.matches!r}: no such file; give a JSONL of Match records")
    matches = read_jsonl(Path(args.matches), Match)
    if not matches:
        raise CharacterError(f"matches={args.matches!r}: no matches in the file")
    online = elo(matches, k=args.k_factor)
    print(f"{'item':24} {'Bradley-Terry':>13} {'95% interval':>17} {'Elo':>7} {'matches':>8}")
    for r in bootstrap(matches, rounds=args.rounds, seed=args.seed):
        print(f"{r.item:24} {r.rating:13.0f} {f'[{r.low:.0f}, {r.high:.0f}]':>17} {online[r.item]:7.0f} {r.matches:8}")
    return 0


def cmd_eval_classifier(args) -> int:
    """`eval classifier train|score`: both read the same labelled rows."""
    rows = _read_rows(args.data)
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict) or "text" not in r or "label" not in r:
            raise CharacterError(f"data row {n}: needs \"text\" and \"label\" fields")
    texts, labels = [r["text"] for r in rows], [str(r["label"]) for r in rows]
    if args.action == "train":
        clf = PersonaClassifier.train(texts, labels)
        out = clf.save(Path(args.out))
        print(f"trained on {len(rows)} rows, labels {clf.labels}; saved to {out}")
        return 0
    clf = PersonaClassifier.load(Path(args.model))
    unknown = sorted(set(labels) - set(clf.labels))
    if unknown:
        raise CharacterError(f"labels={unknown}: not known to this classifier (it knows {clf.labels})")
    rep = clf.evaluate(texts, labels)
    print(f"accuracy {rep.accuracy:.3f}  macro-F1 {rep.macro_f1:.3f}  on {rep.n} rows")
    print("confusion (rows: true, columns: predicted): " + ", ".join(rep.labels))
    for label, row in zip(rep.labels, rep.confusion, strict=True):
        print(f"  {label:12} {row}")
    return 0


def add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a run (`character eval RUN`), or the tools: elo, classifier, perplexity")
    evs = ev.add_subparsers(dest="what", required=True)
    er = evs.add_parser("run", help="the whole evaluation of a trained run (also: `character eval RUN`)")
    er.add_argument("run")
    er.add_argument("--prompts", type=int, help="held-out prompts (default: the recipe's eval.prompts)")
    er.add_argument("--max-tokens", type=int, help="tokens per answer (default: the recipe's eval.max_tokens)")
    er.add_argument("--sections", nargs="+", choices=list(SECTIONS), help="only these sections")
    er.add_argument("--fresh", action="store_true", help="discard saved sections and start over")
    er.add_argument("--seed", type=int, default=0)
    er.set_defaults(func=cmd_eval)
    ep = evs.add_parser("perplexity", help="perplexity of models on a JSONL of conversations")
    ep.add_argument("--model", nargs="+", default=["embedded"], help="model specs, e.g. embedded hf/PATH")
    ep.add_argument("--data", required=True, help='JSONL rows {"messages": [{"role": ..., "content": ...}]}')
    ep.set_defaults(func=cmd_eval_perplexity)
    el = evs.add_parser("elo", help="ratings from a JSONL of Match records")
    el.add_argument("action", choices=["score"])
    el.add_argument("--matches", required=True)
    el.add_argument("--k-factor", type=float, default=32.0)
    el.add_argument("--rounds", type=int, default=100, help="bootstrap rounds for the intervals")
    el.add_argument("--seed", type=int, default=0)
    el.set_defaults(func=cmd_eval_elo)
    cl = evs.add_parser("classifier", help="train or score the persona classifier")
    cl.add_argument("action", choices=["train", "score"])
    cl.add_argument("--data", required=True, help='JSONL rows {"text": ..., "label": ...}')
    cl.add_argument("--out", default="data/classifier", help="train: output folder")
    cl.add_argument("--model", default="data/classifier", help="score: classifier folder")
    cl.set_defaults(func=cmd_eval_classifier)


# -- results: report card, export --------------------------------------------------------------

def cmd_report(args) -> int:
    rdirs = []
    for name in args.runs:
        rdir = run_dir(name)
        if not rdir.is_dir():
            raise CharacterError(f"run={name!r}: no such run in {rdir.parent}")
        rdirs.append(rdir)
    if len(rdirs) == 1:
        print(run_summary(rdirs[0]))
        out = Path(args.out) if args.out else rdirs[0]
    else:
        name = "-vs-".join(args.runs)
        if len(name) > 64:
            name = f"compare-{stable_id(*args.runs)}"
        out = Path(args.out) if args.out else character_home() / "reports" / check_slug(name, "runs")
    html, md = write_report(rdirs, out)
    print(f"\nreport card: {html}\n             {md}")
    return 0


def add_report(sub) -> None:
    rp = sub.add_parser("report", help="the report card of one run, or several side by side")
    rp.add_argument("runs", nargs="+")
    rp.add_argument("--out", help="folder for report.html and report.md")
    rp.set_defaults(func=cmd_report)


def cmd_export(args) -> int:
    if args.format == "gguf":
        return export_gguf_cmd(args)
    if not args.out:
        raise CharacterError(f"out: --format {args.format} writes a JSONL file; give --out FILE")
    pairs = read_jsonl(run_dir(args.run) / "distill" / "pairs.jsonl", PreferencePair)
    if not pairs:
        raise CharacterError(f"run={args.run!r}: no pairs to export; run the distill stage first")
    fn = EXPORTERS[args.format]
    out, rdir = Path(args.out).resolve(), run_dir(args.run)
    text = "".join(json.dumps(fn(p), ensure_ascii=False) + "\n" for p in pairs)
    if out.is_relative_to(rdir.resolve()):  # writing into the run: one writer at a time
        with run_lock(rdir):
            write_atomic(out, text)
    else:
        write_atomic(out, text)
    print(f"wrote {len(pairs)} rows to {args.out} ({args.format})")
    return 0


def export_gguf_cmd(args) -> int:
    """The run's merged model as GGUF + Ollama Modelfile (default: runs/<run>/export/)."""
    rdir = run_dir(args.run)
    st = read_status(rdir / "merge")
    if not (rdir / "merge" / "model" / "config.json").exists() or not st or st.state != "done":
        raise CharacterError(f"run={args.run!r}: no finished merged model to export; run the pipeline through merge")
    out = Path(args.out).resolve() if args.out else rdir / "export" / f"{args.run}-{args.quant}.gguf"
    say(f"writing {out} ({args.quant}) ...")
    if out.is_relative_to(rdir.resolve()):
        with run_lock(rdir):
            export_gguf(rdir / "merge" / "model", out, args.quant)
    else:
        export_gguf(rdir / "merge" / "model", out, args.quant)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MB) and {out.parent / 'Modelfile'}\n"
          f"serve it:  python -m llama_cpp.server --model {out}   (then openai/<any-name> with OPENAI_BASE_URL="
          "http://localhost:8000/v1)\n"
          f"or Ollama: cd {out.parent} && ollama create {args.run} -f Modelfile && ollama run {args.run}")
    return 0


def add_export(sub) -> None:
    ex = sub.add_parser("export", help="export a run's preference pairs for other trainers, or its model as GGUF")
    ex.add_argument("run")
    ex.add_argument("--format", choices=["trl", "openai-sft", "openai-dpo", "together", "gguf"], default="trl")
    ex.add_argument("--quant", choices=["f32", "f16", "q8_0"], default="f16",
                    help="gguf: f32 (greedy answers equal transformers'), f16 (half the size), q8_0 (a quarter); "
                         "for q4_k_m run llama.cpp's llama-quantize on the f16 file")
    ex.add_argument("--out", help="output file (pairs formats: required; gguf: default runs/<run>/export/)")
    ex.set_defaults(func=cmd_export)


# -- behaviours --------------------------------------------------------------------------------

def cmd_behaviors_run(args) -> int:
    cfgs = [B.load_config(c) for c in args.configs]  # validate every config before starting any
    B.check_distinct(cfgs, args.configs)
    if len(cfgs) > 1 and args.parallel > 1:
        extra = [*(["--stages", *args.stages] if args.stages else []), *(["--restart"] if args.restart else [])]
        return B.run_parallel(args.configs, extra, args.parallel)
    for cfg in cfgs:
        outcome = B.run(cfg, args.stages, args.restart, say=say)
        summary_file = B.behavior_dir(cfg.name) / "judge" / "summary.json"
        if summary_file.exists() and "judge" in outcome["results"]:
            print(B.format_summary(read_json(summary_file)))
        print(f"records in {outcome['dir']}")
    return 0


def cmd_behaviors_list(args) -> int:
    rows = B.list_behaviors()
    if not rows:
        print("no behaviour evaluations yet; run one: character behaviors run configs/behaviors/pirate-hostile.yaml")
    for r in rows:
        print(f"{r['name']:<28} " + "  ".join(f"{s} {r[s]}" for s in B.STAGES))
    return 0


def cmd_behaviors_show(args) -> int:
    p = B.behavior_dir(args.name) / "judge" / "summary.json"
    if not p.exists():
        raise CharacterError(f"name={args.name!r}: no judged behaviour evaluation by that name; see "
                             "`character behaviors list`")
    print(B.format_summary(read_json(p)))
    return 0


def add_behaviors(sub) -> None:
    b = sub.add_parser("behaviors", help="behaviour evaluations: scenarios, rollouts, judgments, training data")
    bs = b.add_subparsers(dest="action", required=True)
    br = bs.add_parser("run", help="run behaviour config(s) (resumes; skips finished stages)")
    br.add_argument("configs", nargs="+", help="behaviour config YAML file(s), e.g. configs/behaviors/*.yaml")
    br.add_argument("--stages", nargs="+", help="only these stages (understand ideate rollout judge data)")
    br.add_argument("--parallel", type=int, default=1, help="run several configs as parallel processes")
    br.add_argument("--restart", action="store_true", help="redo the first chosen stage and every stage after it")
    br.set_defaults(func=cmd_behaviors_run)
    bl = bs.add_parser("list", help="behaviour evaluations and their stages")
    bl.set_defaults(func=cmd_behaviors_list)
    bsh = bs.add_parser("show", help="a judged behaviour evaluation's summary")
    bsh.add_argument("name")
    bsh.set_defaults(func=cmd_behaviors_show)


# -- agents from their own words ----------------------------------------------------------------

def cmd_agents_import(args) -> int:
    cfg = cohort.load_config(args.recipe)
    status = cohort.import_corpus(cfg)
    print(cohort.format_import(status))
    print(f"data in {cohort.cohort_dir(cfg.name) / 'data'}")
    return 0


AGENT_SECTIONS = ("perplexity", "votes", "completions", "profiles", "alignment")


def cmd_agents_train(args) -> int:
    cfg = cohort.load_config(args.recipe)
    points = agents_train.grid_points(cfg)
    if args.point is not None:
        if not 0 <= args.point < len(points):
            raise CharacterError(f"--point={args.point}: the recipe's grid has {len(points)} point(s), 0-{len(points) - 1}")
        for agent in args.only or cohort.agent_names(cfg):
            agents_train.train_one(cfg, agent, points[args.point])
        return 0
    return agents_train.train_all(cfg, args.recipe, args.only, args.parallel)


def cmd_agents_eval(args) -> int:
    cfg = cohort.load_config(args.recipe)
    points = agents_train.grid_points(cfg)
    if not 0 <= args.point < len(points):
        raise CharacterError(f"--point={args.point}: the recipe's grid has {len(points)} point(s), 0-{len(points) - 1}")
    point = points[args.point]
    cohort.imported(cfg)
    out = cohort.cohort_dir(cfg.name) / "eval" / agents_train.point_id(cfg, point)

    def profiles():
        agents_profiles.run_profiles(cfg, args.model, say=say)
        return (f"profiles in {cohort.cohort_dir(cfg.name) / 'profiles'}; review the questions: "
                f"character agents review {args.recipe} --agent NAME")
    steps = {
        "perplexity": lambda: agents_measure.format_perplexity(agents_measure.run_perplexity(cfg, point, out)),
        "votes": lambda: agents_measure.format_votes(agents_measure.run_votes(cfg, point, out, args.model)),
        "completions": lambda: agents_completions.format_completions(
            agents_completions.run_completions(cfg, point, out, judge_spec=args.model)),
        "profiles": profiles,
        "alignment": lambda: agents_alignment.format_alignment(
            agents_alignment.run_alignment(cfg, point, out, judge_spec=args.model)),
    }
    for name in args.sections or AGENT_SECTIONS:
        try:
            print(steps[name]())
        except CharacterError as e:
            if args.sections:  # a section asked for by name fails the command
                raise
            say(f"[{name}] skipped: {e}")  # the default (every section): one that does not apply is skipped
    print(f"results in {out}")
    return 0


def cmd_agents_report(args) -> int:
    cfg = cohort.load_config(args.recipe)
    html, md = agents_report.write_report(cfg)
    print(md.read_text())
    print(f"report card: {html}")
    return 0


def cmd_agents_run(args) -> int:
    """Import, train, evaluate and report, each step resuming from what is saved."""
    cfg = cohort.load_config(args.recipe)
    print(cohort.format_import(cohort.import_corpus(cfg)))
    if agents_train.train_all(cfg, args.recipe, parallel=args.parallel) != 0:
        raise CharacterError("agents run: an agent's training failed (see above); run the same command to resume")
    args.sections, args.point, args.model = None, 0, None  # every section that applies, at grid point 0
    cmd_agents_eval(args)
    return cmd_agents_report(args)


def cmd_agents_review(args) -> int:
    cfg = cohort.load_config(args.recipe)
    known = cohort.agent_names(cfg)
    if args.agent not in known:
        raise CharacterError(f"--agent={args.agent!r}: not an agent of cohort {cfg.name!r}; known: {', '.join(known)}")
    path = agents_profiles.questions_path(cohort.cohort_dir(cfg.name), args.agent)
    agents_review.review(path, args.agent)
    return 0


def add_agents(sub) -> None:
    a = sub.add_parser("agents", help="agents from their own words: one model per person from their corpus")
    asub = a.add_subparsers(dest="action", required=True)
    ai = asub.add_parser("import", help="read, check and split a cohort's corpus and motions (configs/council-cpu.yaml)")
    ai.add_argument("recipe", help="agents recipe YAML")
    ai.set_defaults(func=cmd_agents_import)
    at = asub.add_parser("train", help="train and merge one model per agent (and grid point); resumes")
    at.add_argument("recipe", help="agents recipe YAML")
    at.add_argument("--only", nargs="+", metavar="AGENT", help="only these agents")
    at.add_argument("--point", type=int, help="only this grid point (0-based, in the recipe's order)")
    at.add_argument("--parallel", type=int, help="agents and points trained at once as processes (recipe: parallel)")
    at.set_defaults(func=cmd_agents_train)
    ae = asub.add_parser("eval", help="perplexity matrix and votes of the trained agents")
    ae.add_argument("recipe", help="agents recipe YAML")
    ae.add_argument("--sections", nargs="+", choices=AGENT_SECTIONS,
                    help="only these (default: every section that applies; one that does not is skipped, saying why)")
    ae.add_argument("--point", type=int, default=0, help="the grid point to evaluate (0-based)")
    ae.add_argument("--model", help="model that judges completions, extracts profiles and writes questions "
                    "(default: the recipe's base)")
    ae.set_defaults(func=cmd_agents_eval)
    ar = asub.add_parser("review", help="review an agent's probing questions (accept, edit, delete, add, skip)")
    ar.add_argument("recipe", help="agents recipe YAML")
    ar.add_argument("--agent", required=True, help="the agent whose questions to review")
    ar.set_defaults(func=cmd_agents_review)
    arp = asub.add_parser("report", help="the cohort's report card (report.md and report.html)")
    arp.add_argument("recipe", help="agents recipe YAML")
    arp.set_defaults(func=cmd_agents_report)
    arn = asub.add_parser("run", help="the whole cohort pipeline: import, train, eval, report (resumes)")
    arn.add_argument("recipe", help="agents recipe YAML")
    arn.add_argument("--parallel", type=int, help="agents trained at once as processes (recipe: parallel)")
    arn.set_defaults(func=cmd_agents_run)


# -- studio ------------------------------------------------------------------------------------

def cmd_studio(args) -> int:
    app = Path(__file__).resolve().parent.parent / "studio_app.py"
    os.execvp(sys.executable, [sys.executable, "-m", "streamlit", "run", str(app),
                               "--server.address", args.address, "--server.port", str(args.port),
                               "--server.headless", "true",
                               # no source watching: polling the tree cost a whole CPU core on 2 cores
                               "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"])
    return 0


def add_studio(sub) -> None:
    s = sub.add_parser("studio", help="open the Studio web app (http://localhost:8501)")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--address", default="localhost")
    s.set_defaults(func=cmd_studio)


# -- the command -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="character", description="Character training: constitutions, data, "
                                "training, evaluation and chat.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (add_constitution, add_chat, add_pipeline, add_contexts, add_conversations, add_eval, add_preview,
                add_estimate, add_report, add_export, add_behaviors, add_agents, add_studio):  # the order of `--help`
        add(sub)
    return p


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: stages record `stopped`, finished work stays saved


def main(argv: list[str] | None = None) -> int:
    load_env()
    log.setup()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "eval" and argv[1] not in EVAL_TOOLS and not argv[1].startswith("-"):
        argv.insert(1, "run")  # `character eval RUN` is `character eval run RUN`
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and not args.recipes and not (isinstance(args.restart, str) and
                                                            Path(args.restart).is_file()):
        parser.error("run: give at least one recipe YAML file")
    try:
        return args.func(args)
    except CharacterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; finished work is saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
