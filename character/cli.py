"""The `character` command. One subcommand per stage; user errors print one line and exit 1.

    character constitution list | show NAME | validate PATH... | import PATH | draft "DESCRIPTION"
    character chat --constitution NAME [--model SPEC] [-m MESSAGE]
    character studio
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import default_model, load_env
from .errors import CharacterError


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- constitution ------------------------------------------------------------------------------

def cmd_constitution(args) -> int:
    from . import constitution as C

    if args.action == "list":
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
    if args.action == "show":
        c = C.load(args.target)
        print(C.dump(c, args.format), end="")
        if args.prompt:
            print("\n# teacher system prompt\n" + C.render_system_prompt(c))
        return 0
    if args.action == "validate":
        targets = args.targets or [str(p) for p in sorted(C.constitutions_dir().glob("*")) if p.suffix in C.SUFFIXES]
        bad = 0
        for t in targets:
            try:
                c = C.load(t)
                print(f"ok  {t}: {len(c.traits)} traits, {len(c.questions)} questions")
            except CharacterError as e:
                bad += 1
                print(f"error: {e}", file=sys.stderr)
        return 1 if bad else 0
    if args.action == "import":
        c = C.import_trait_list(Path(args.target), name=args.name)
        out = C.save(c, Path(args.out) if args.out else None, overwrite=args.force)
        print(f"wrote {out} ({len(c.traits)} traits)")
        return 0
    if args.action == "draft":
        from .inference import get_backend
        if args.out:
            out = Path(args.out)
            if out.exists() and not args.force:
                raise CharacterError(f"out={args.out!r}: file exists; choose another path or pass --force")
        spec = args.model or default_model("teacher")
        _progress(f"drafting with {spec} ...")
        c = C.draft_constitution(args.target, get_backend(spec), name=args.name, n_traits=args.traits,
                                 n_questions=args.questions, seed=args.seed)
        out = C.save(c, Path(args.out) if args.out else None, overwrite=args.force)
        print(f"wrote {out} ({len(c.traits)} traits)")
        return 0
    raise CharacterError(f"constitution action={args.action!r}: unknown")


# -- chat --------------------------------------------------------------------------------------

def cmd_chat(args) -> int:
    from . import constitution as C
    from .inference import get_backend
    from .types import Message, SamplingParams

    spec = args.model or default_model("student")
    options = {"adapters": args.adapter} if args.adapter else {}
    history: list[Message] = []
    if args.constitution:
        history.append(Message(role="system", content=C.render_system_prompt(C.load(args.constitution))))
    backend = get_backend(spec, **options)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
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
        history.append(Message(role="user", content=text))
        print("bot> ", end="", flush=True)
        reply = ""
        for piece in backend.stream(history, params):
            reply += piece
            print(piece, end="", flush=True)
        print()
        history.append(Message(role="assistant", content=reply.strip()))


def cmd_studio(args) -> int:
    app = Path(__file__).resolve().parent.parent / "studio_app.py"
    os.execvp(sys.executable, [sys.executable, "-m", "streamlit", "run", str(app),
                               "--server.address", args.address, "--server.port", str(args.port),
                               "--server.headless", "true"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="character", description="Character training: constitutions, data, "
                                "training, evaluation and chat.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("constitution", help="list, show, validate, import or draft constitutions")
    c.add_argument("action", choices=["list", "show", "validate", "import", "draft"])
    c.add_argument("target", nargs="?", help="NAME (show), PATH (import), or DESCRIPTION (draft)")
    c.add_argument("targets", nargs="*", help=argparse.SUPPRESS)
    c.add_argument("--model", help="model spec for draft (default: the teacher model, 'embedded')")
    c.add_argument("--out", help="output file (default: constitutions/<name>.yaml)")
    c.add_argument("--name", help="name (slug) for the new constitution")
    c.add_argument("--force", action="store_true", help="overwrite an existing file")
    c.add_argument("--format", choices=["yaml", "json"], default="yaml")
    c.add_argument("--prompt", action="store_true", help="show: also print the teacher system prompt")
    c.add_argument("--traits", type=int, default=8, help="draft: number of traits")
    c.add_argument("--questions", type=int, default=5, help="draft: questions per trait")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_constitution)

    ch = sub.add_parser("chat", help="chat with a model, optionally in a constitution's character")
    ch.add_argument("--model", help="model spec (default: the student model, 'embedded')")
    ch.add_argument("--constitution", help="use this constitution as the system prompt")
    ch.add_argument("--adapter", action="append", help="PEFT adapter folder to apply (repeatable)")
    ch.add_argument("-m", "--message", help="send one message and exit")
    ch.add_argument("--max-tokens", type=int, default=256)
    ch.add_argument("--temperature", type=float, default=0.7)
    ch.add_argument("--seed", type=int, default=None)
    ch.set_defaults(func=cmd_chat)

    s = sub.add_parser("studio", help="open the Studio web app (http://localhost:8501)")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--address", default="localhost")
    s.set_defaults(func=cmd_studio)
    return p


def main(argv: list[str] | None = None) -> int:
    load_env()
    args = build_parser().parse_args(argv)
    if args.command == "constitution" and args.action == "validate":
        args.targets = ([args.target] if args.target else []) + list(args.targets)
    elif args.command == "constitution" and args.action != "list" and not args.target:
        print(f"error: constitution {args.action} needs an argument (see --help)", file=sys.stderr)
        return 2
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
