"""The `jinject` command line: compile, train, eval, decode."""

from __future__ import annotations

import argparse
import sys


def cmd_compile(args: argparse.Namespace) -> int:
    raise NotImplementedError("jinject compile: not built yet")


def cmd_train(args: argparse.Namespace) -> int:
    raise NotImplementedError("jinject train: not built yet")


def cmd_eval(args: argparse.Namespace) -> int:
    raise NotImplementedError("jinject eval: not built yet")


def cmd_decode(args: argparse.Namespace) -> int:
    raise NotImplementedError("jinject decode: not built yet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jinject", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile (or load cached) a task's tracr teacher and verify it")
    p.add_argument("task", help="shuffle-dyck | count | int-sum")
    p.add_argument("--max-seq-len", type=int, default=None, help="teacher context length")
    p.add_argument("--n-check", type=int, default=200, help="random inputs checked against the oracle")
    p.set_defaults(func=cmd_compile)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"jinject {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
