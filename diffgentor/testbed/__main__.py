"""`python -m diffgentor.testbed build [NAME...] --cache-root DIR`: prebuild testbeds, print their folders."""

from __future__ import annotations

import argparse
import pathlib
import time

from diffgentor.testbed import TESTBED_NAMES, materialize


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffgentor.testbed")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build testbeds into the cache (all when no NAME is given)")
    build.add_argument("names", nargs="*", metavar="NAME", help=f"one of {', '.join(TESTBED_NAMES)}")
    build.add_argument("--cache-root", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in TESTBED_NAMES]
    if unknown:
        parser.error(f"unknown testbed(s) {unknown}; choose from {list(TESTBED_NAMES)}")
    for name in args.names or TESTBED_NAMES:
        started_s = time.perf_counter()
        folder = materialize(name, args.cache_root)
        print(f"{name}\t{folder}\t{time.perf_counter() - started_s:.2f}s")


if __name__ == "__main__":
    main()
