"""The `tunelab` command. Each subcommand is a thin layer over one core/ function.

Exit codes: 0 ok, 2 user error (message on stderr), 1 bug. `--json` prints one JSON document on
stdout and nothing else (progress bars go to stderr).
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from contextlib import contextmanager

from core.errors import UserError


# ---------------------------------------------------------------- helpers shared by commands

def _db_ws():
    from core import db, workspace
    ws = workspace.current()
    return db.connect(ws.db_path), ws


def _print_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


@contextmanager
def progress_bar(desc: str):
    """A tqdm bar on stderr, fed by core's `progress(fraction, message)` callbacks."""
    from tqdm import tqdm
    bar = tqdm(total=100, desc=desc, file=sys.stderr, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def update(fraction: float, message: str = "") -> None:
        bar.n = round(100 * max(0.0, min(1.0, fraction)))
        bar.set_postfix_str(message)
        bar.refresh()
    try:
        yield update
    finally:
        bar.close()


def _table(rows: list[dict], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "") if r.get(c) is not None else "").ljust(widths[c]) for c in columns))


# ---------------------------------------------------------------- models

def cmd_models_list(args) -> None:
    from core import models
    db, _ = _db_ws()
    rows = [{"name": m.name, "kind": m.kind, "source": m.source, "prepared": m.prepared, "path": m.path,
             "params": m.params, "size_bytes": m.size_bytes} for m in models.list_models(db)]
    if args.json:
        _print_json(rows)
    else:
        _table(rows, ["name", "kind", "source", "prepared", "params", "path"])


def cmd_models_prepare(args) -> None:
    from core import models
    db, ws = _db_ws()
    with progress_bar(f"preparing {args.name}") as update:
        path = models.prepare(db, ws, args.name, progress=update)
    print(path)


def cmd_models_add(args) -> None:
    from core import models
    db, _ = _db_ws()
    info = models.add_local(db, args.path, args.name)
    print(f"registered {info.name} ({info.params or '?'} parameters) from {info.path}")


# ---------------------------------------------------------------- generate

def cmd_generate(args) -> None:
    from core import generate, models
    db, ws = _db_ws()
    with progress_bar(f"loading {args.model}") as update:
        path = models.model_path(db, ws, args.model, progress=update)
    adapter = generate.adapter_dir(ws.runs_dir, args.adapter) if args.adapter else None
    model, tokenizer = generate.load(path, adapter)
    settings = generate.SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                         top_p=args.top_p, seed=args.seed, system_prompt=args.system)
    [answer] = generate.generate(model, tokenizer, [args.prompt], settings)
    if args.json:
        _print_json({"model": args.model, "adapter": args.adapter, "prompt": args.prompt, "answer": answer,
                     "settings": settings.to_dict()})
    else:
        print(answer)


# ---------------------------------------------------------------- users

def _read_password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise UserError("the two passwords differ")
    return first


def cmd_users_add(args) -> None:
    from core import auth
    db, _ = _db_ws()
    user = auth.add_user(db, args.name, args.role, _read_password(args))
    print(f"added {user.name} ({user.role})")


def cmd_users_list(args) -> None:
    from core import auth
    db, _ = _db_ws()
    rows = [{"name": u.name, "role": u.role} for u in auth.list_users(db)]
    _print_json(rows) if args.json else _table(rows, ["name", "role"])


def cmd_users_role(args) -> None:
    from core import auth
    db, _ = _db_ws()
    auth.set_role(db, args.name, args.role)
    print(f"{args.name} is now {args.role}")


def cmd_users_password(args) -> None:
    from core import auth
    db, _ = _db_ws()
    auth.set_password(db, args.name, _read_password(args))
    print(f"password of {args.name} changed")


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunelab", description="A local-first fine-tuning studio for LLMs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="base models: list, prepare the bundled one, add a local folder")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    x = msub.add_parser("list", help="registered base models")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_models_list)
    x = msub.add_parser("prepare", help="convert a bundled model to safetensors (once)")
    x.add_argument("name", help="e.g. smollm2-135m-instruct")
    x.set_defaults(func=cmd_models_prepare)
    x = msub.add_parser("add", help="register a local Hugging Face model folder")
    x.add_argument("path", help="folder with config.json and a tokenizer")
    x.add_argument("--name", required=True, help="name to register it under")
    x.set_defaults(func=cmd_models_add)

    x = sub.add_parser("generate", help="answer one prompt with a model (and adapter), using its chat template")
    x.add_argument("--model", default="smollm2-135m-instruct", help="registered model name")
    x.add_argument("--adapter", help="run id whose LoRA adapter to apply")
    x.add_argument("--prompt", required=True, help="the user message")
    x.add_argument("--system", help="system prompt")
    x.add_argument("--max-new-tokens", type=int, default=128, help="most tokens to generate")
    x.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    x.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass")
    x.add_argument("--seed", type=int, default=0, help="sampling seed")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_generate)

    users = sub.add_parser("users", help="users and roles (admin, engineer, annotator, viewer)")
    usub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    x = usub.add_parser("add", help="add a user; the password comes from a prompt or --password-stdin")
    x.add_argument("name", help="user name")
    x.add_argument("--role", required=True, help="admin|engineer|annotator|viewer")
    x.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    x.set_defaults(func=cmd_users_add)
    x = usub.add_parser("list", help="users and their roles")
    x.add_argument("--json", action="store_true", help="print JSON")
    x.set_defaults(func=cmd_users_list)
    x = usub.add_parser("role", help="change a user's role")
    x.add_argument("name", help="user name")
    x.add_argument("role", help="admin|engineer|annotator|viewer")
    x.set_defaults(func=cmd_users_role)
    x = usub.add_parser("password", help="reset a user's password (signs them out)")
    x.add_argument("name", help="user name")
    x.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    x.set_defaults(func=cmd_users_password)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
