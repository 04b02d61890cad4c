"""Run every benchmark under bench/ that has a ``main``."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path


def main() -> None:
    here = Path(__file__).parent
    found = False
    for module in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name):
        if not module.ispkg:
            continue
        bench = importlib.import_module(f"bench.{module.name}")
        if hasattr(bench, "main"):
            found = True
            print(f"== bench/{module.name}")
            bench.main()
    if not found:
        print("no benchmarks yet")


if __name__ == "__main__":
    main()
