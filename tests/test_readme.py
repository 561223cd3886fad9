"""The README's example runs as printed."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_as_printed(capsys):
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "E_ITS_MAPTI_UNMAPPED_DEVICE",
        "(8200, 1)",
        "0300200800000080",
        "0100082000000000",
    ]


def test_readme_opens_with_two_commands():
    lines = README.read_text().splitlines()
    fence = lines.index("```sh")
    commands = lines[fence + 1 : lines.index("```", fence + 1)]
    assert len(commands) == 2
    assert commands[0].endswith("pkvm-sim compare")
    assert commands[1].endswith("python -m pytest")
    assert "python -m pytest" in (README.parent / ".ci" / "run").read_text()
