"""Summarise py-spy raw (collapsed) stacks: own time per function and share per package."""

from __future__ import annotations

import collections
import re
import sys

PACKAGES = [
    ("aioquic", "aioquic"),
    ("jumping_quic", "jumping-quic plugin"),
    ("jumping/core", "jumping core"),
    ("jumping/service", "jumping service"),
    ("jumping/builtin", "jumping builtin"),
    ("twisted", "twisted"),
    ("cryptography", "cryptography"),
    ("nacl", "pynacl"),
]


def package(frame: str) -> str:
    for key, name in PACKAGES:
        if key in frame:
            return name
    return "other"


def main(paths: list[str]) -> None:
    for path in paths:
        own: collections.Counter[str] = collections.Counter()
        pkg: collections.Counter[str] = collections.Counter()
        total = 0
        for line in open(path):
            stack, _, n = line.rstrip().rpartition(" ")
            if not n.isdigit():
                continue
            frames = stack.split(";")
            leaf = frames[-1]
            count = int(n)
            total += count
            own[re.sub(r" \(/.*/site-packages/", " (", leaf)] += count
            pkg[package(leaf)] += count
        print(f"== {path}: {total} samples")
        for name, c in pkg.most_common():
            print(f"  {100 * c / total:5.1f}%  {name}")
        print("  top functions by own time:")
        for name, c in own.most_common(15):
            print(f"  {100 * c / total:5.1f}%  {name[:110]}")


if __name__ == "__main__":
    main(sys.argv[1:])
