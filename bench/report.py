"""Benchmark tables: print them and record them in docs/benchmarks.md between per-benchmark markers."""

from __future__ import annotations

import platform
import re
import shlex
import sys
from datetime import date
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line naming the machine the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in info:
        # Two machines of one "model name" can differ several-fold in inference speed (e.g. with and without
        # AVX-512), so the family, model and widest vector unit go with it.
        flags = set(info.get("flags", "").split())
        isa = "AVX-512" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
        cpu = f"{info['model name']} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, {isa})"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def record(name: str, title: str, body: str) -> None:
    """Replace (or append) the section ``name`` of docs/benchmarks.md with ``body`` and the command that made it."""
    command = "python " + " ".join(
        shlex.quote(a) for a in [Path(sys.argv[0]).as_posix().split("/work/main/")[-1], *sys.argv[1:]]
    )
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"Measured {date.today().isoformat()} on: {machine()}.\n"
        f"Command: `{command}`\n\n{body}\n<!-- /bench:{name} -->"
    )
    text = (
        BENCHMARKS_MD.read_text()
        if BENCHMARKS_MD.exists()
        else "# Benchmarks\n\nEvery figure here was measured by a script in `bench/`; each section names its command.\n"
    )
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS_MD.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS_MD.write_text(text)
