"""Write the seed corpus: every real datagram of the pair, under each selector (which core,
which path, spliced or whole). ``python3 tests/fuzz/make_corpus.py DIR``."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import Pair  # noqa: E402


def main(out: str) -> None:
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    p = Pair()
    n = 0
    for i, seed in enumerate(p.seeds):
        for sel in (0, 1, 2, 3, 5, 8 | 1 | (i << 4) & 0xF0, 8 | (i << 4) & 0xF0):
            data = bytes((sel & 0xFF,)) + (seed if not sel & 8 else seed[16:])
            (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
            n += 1
        pdata = b"P" + seed
        (d / hashlib.sha1(pdata).hexdigest()).write_bytes(pdata)
    print(f"{n} inputs in {d}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus")
