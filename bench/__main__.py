"""``python -m bench``: run every benchmark and print one table.

Each benchmark module in ``MODULES`` exposes ``run(quick: bool) -> list[Figure]``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench.common import Figure, print_table

# Benchmark modules, in the order their rows appear.
MODULES: list[str] = ["converters", "dataplane", "outbox", "lifecycle", "fleet"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("only", nargs="*", help="run only these modules (default: all)")
    parser.add_argument("--quick", action="store_true", help="shorter runs, rougher figures")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    figures: list[Figure] = []
    for name in args.only or MODULES:
        module = importlib.import_module(f"bench.{name}")
        print(f"running bench.{name} ...", file=sys.stderr, flush=True)
        figures.extend(module.run(args.quick))
    print_table(figures, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
