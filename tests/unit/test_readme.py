"""The README's commands stay true: the quick start is what CI runs, and every `twin` example parses."""

from __future__ import annotations

import re
import shlex

from tests.conftest import ROOT
from twin.cli import build_parser

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.split("#")[0].strip() for line in text.splitlines() if line.strip()]


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_second():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)
    assert len(commands) == 2
    assert "twin run scenarios/kol-10k.toml" in commands[0]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1].replace(" -q", "") in ci.replace(" -q", "")


def test_every_twin_example_parses():
    parser = build_parser()
    examples = [line for line in _code_lines() if line.startswith("twin ") or "/twin " in line]
    assert len(examples) >= 4
    for line in examples:
        args = shlex.split(line[line.index("twin ") + len("twin "):])
        parsed = parser.parse_args(args)
        assert parsed.func is not None
        for path in [a for a in args if a.endswith(".toml") and a.startswith("scenarios/") and "*" not in a]:
            assert (ROOT / path).exists(), path
