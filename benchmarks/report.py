#!/usr/bin/env python
"""Put benchmark results into the README: every block between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``
is replaced by ``benchmarks/results/NAME.md`` (its first heading dropped), so README figures are never typed by hand.
``<!-- results:NAME#SECTION -->`` takes only the ``## `` section of that file whose heading, lower-cased with every run
of other characters than letters and digits turned into one ``-``, is SECTION (without the heading line).

Usage:
    python benchmarks/report.py           # rewrite README.md
    python benchmarks/report.py --check   # exit 1 when README.md differs from the results files (CI runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+(?:#[\w-]+)?) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def slug(heading: str) -> str:
    """'## Step cost' -> 'step-cost'."""
    return re.sub(r"[^a-z0-9]+", "-", heading.lstrip("#").strip().lower()).strip("-")


def body(name: str) -> str:
    """The results file (or its section) as it goes into the README: without its title line, ending in one newline."""
    name, _, section = name.partition("#")
    path = RESULTS / f"{name}.md"
    if not path.is_file():
        raise FileNotFoundError(f"README block 'results:{name}' names {path}, which does not exist")
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    if section:
        starts = [i for i, line in enumerate(lines) if line.startswith("## ") and slug(line) == section]
        if not starts:
            raise LookupError(f"README block 'results:{name}#{section}': {path} has no '## ' section '{section}'")
        end = next((i for i in range(starts[0] + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[starts[0] + 1 : end]
    return "\n".join(lines).strip() + "\n"


def render(readme: str) -> str:
    """README text with every results block refreshed."""
    return BLOCK.sub(lambda m: m.group(1) + body(m.group("name")) + m.group(4), readme)


def main(argv: list[str] | None = None) -> int:
    """Rewrite or check README.md."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="fail when README.md is not up to date")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    a = p.parse_args(argv)
    text = a.readme.read_text(encoding="utf-8")
    new = render(text)
    names = [m.group("name") for m in BLOCK.finditer(text)]
    if a.check:
        if new != text:
            stale = [n for n in names if render(f"<!-- results:{n} -->\n\n<!-- /results:{n} -->") not in text]
            print(f"README.md results differ from benchmarks/results ({', '.join(stale) or 'blocks'}): run "
                  "python benchmarks/report.py")
            return 1
        print(f"README.md results up to date ({len(names)} blocks: {', '.join(names)})")
        return 0
    a.readme.write_text(new, encoding="utf-8")
    print(f"README.md: {len(names)} results blocks refreshed ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
