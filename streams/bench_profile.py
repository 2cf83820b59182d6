"""The worker's profile for ``accelpilot bench pipeline --profile FILE``: py-spy samples the
worker process while it drains the backlog; this module reads py-spy's collapsed stacks
(``--format raw``: one ``frame;frame;...;frame count`` line per distinct stack) and names the
hottest functions.

>>> stacks = ["main (a.py:1);work (a.py:5);parse (b.py:9) 30", "main (a.py:1);work (a.py:5) 10"]
>>> top_functions(stacks, n=2)["self"]
[{'function': 'parse (b.py)', 'share': 0.75}, {'function': 'work (a.py)', 'share': 0.25}]
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")


def py_spy_argv(out: Path, rate_hz: int = 100) -> list[str] | None:
    """The command prefix that records a child under py-spy, or None when py-spy is missing."""
    exe = shutil.which("py-spy") or _beside_python("py-spy")
    if exe is None:
        return None
    return [exe, "record", "--rate", str(rate_hz), "--format", "raw", "-o", str(out), "--"]


def _beside_python(name: str) -> str | None:
    import sys

    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else None


def _function(frame: str) -> str:
    """``name (file.py:12)`` -> ``name (file.py)``: one entry per function, not per line."""
    return _LINE.sub(")", frame.strip())


def top_functions(lines: Iterable[str], n: int = 15) -> dict[str, Any]:
    """The ``n`` functions with the most samples on top of the stack (``self``) and anywhere in
    it (``inclusive``), as shares of all samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = [_function(f) for f in stack.split(";")]
        total += k
        own[frames[-1]] += k
        for f in set(frames):
            inclusive[f] += k
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}

    def ranked(c: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "share": round(v / total, 3)} for f, v in c.most_common(n)]

    return {"samples": total, "self": ranked(own), "inclusive": ranked(inclusive)}


def summarize(path: Path, n: int = 15) -> dict[str, Any]:
    if not path.exists():
        return {"error": f"no profile written to {path} (py-spy needs ptrace: run as root)"}
    with path.open(encoding="utf-8", errors="replace") as f:
        out = top_functions(f, n)
    out["file"] = str(path)
    return out
