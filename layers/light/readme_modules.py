"""Writes the README's list of torch-free modules from modules.txt (the one list), or checks it.

``python layers/light/readme_modules.py --write`` (``make readme-modules``) rewrites the block
between the markers in README.md; ``--check`` exits 1, showing the expected block, when the
README disagrees with modules.txt (tests/unit/test_contracts.py runs it). Standard library only.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = HERE / "modules.txt"
README = HERE.parents[1] / "README.md"
BEGIN = "<!-- light-modules: generated from layers/light/modules.txt by `make readme-modules` -->"
END = "<!-- /light-modules -->"
WIDTH = 100


def read_modules(path: Path) -> list[str]:
    """modules.txt: one dotted module name a line; blank lines and ``#`` comments ignored."""
    lines = (raw.split("#", 1)[0].strip() for raw in path.read_text().splitlines())
    return [line for line in lines if line]


def render(modules: list[str]) -> str:
    """One bullet per package: the package, then its listed modules (and subpackages)."""
    listed = set(modules)
    groups: dict[str, list[str]] = {}
    for name in sorted(listed):
        parts = name.split(".")
        if len(parts) == 1 or (len(parts) == 2 and any(m.startswith(name + ".") for m in listed)):
            groups.setdefault(name, [])
            continue
        package = ".".join(parts[:2]) if len(parts) > 2 else parts[0]
        groups.setdefault(package, []).append(".".join(parts[len(package.split(".")) :]))
    lines = [BEGIN]
    for package, members in groups.items():
        names = ", ".join(f"`{m}`" for m in members)
        item = f"- `{package}`" + (f": {names}" if names else "")
        lines += textwrap.wrap(item, WIDTH, subsequent_indent="  ", break_on_hyphens=False)
    lines.append(END)
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the marked block replaced; ``ValueError`` when the markers are missing."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no block between {BEGIN!r} and {END!r}")
    return text[:start] + block + text[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the README block")
    action.add_argument("--check", action="store_true", help="exit 1 if the README disagrees")
    parser.add_argument("--modules", type=Path, default=MODULES)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    block = render(read_modules(args.modules))
    text = args.readme.read_text()
    wanted = replace_block(text, block)
    if args.write:
        if wanted != text:
            args.readme.write_text(wanted)
        return 0
    if wanted != text:
        print(f"{args.readme} disagrees with {args.modules}; run `make readme-modules`.")
        print(f"Expected:\n{block}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
