"""A corpus of malformed scenario files (tests/data/bad-scenarios/): each gets a clear
message per mistake naming file, line, field and expectation, exit status 2, no traceback,
nothing on stdout and no output files, from every command that reads a scenario.

The first line of each file says what the message must hold:
``# expect: <line>: <field>: <substring of the message>``.
"""

import re
from pathlib import Path

import pytest

from sim.cli import main

CORPUS = Path(__file__).resolve().parent / "data" / "bad-scenarios"
EXPECT = re.compile(r"^# expect: (\d+): ([^:]+): (.+)$")

# Files whose message sim/scenario.py does not yet get right: kept in the corpus with the
# message it should give, and expected to fail until it does (strict: a fix shows up here).
KNOWN_PROBLEMS: dict[str, str] = {}


def corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.yaml"))


def expectation(path: Path) -> tuple[int, str, str]:
    first = path.read_text().splitlines()[0]
    match = EXPECT.match(first)
    assert match, f"{path.name}: first line must be '# expect: <line>: <field>: <text>'"
    return int(match[1]), match[2], match[3]


def test_the_corpus_is_big_and_every_file_says_what_it_expects():
    files = corpus()
    assert len(files) >= 20
    for path in files:
        expectation(path)
    assert set(KNOWN_PROBLEMS) <= {p.name for p in files}
    # Each file is a different mistake: no two expect the same message at the same line.
    expected = [expectation(p) for p in files]
    assert len(set(expected)) == len(expected)


def params():
    for path in corpus():
        marks = []
        if path.name in KNOWN_PROBLEMS:
            marks.append(pytest.mark.xfail(reason=KNOWN_PROBLEMS[path.name], strict=True))
        yield pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", list(params()))
def test_bad_scenario_gets_clear_messages_and_exit_2(path, tmp_path, capsys):
    line, field, text = expectation(path)
    out = tmp_path / "out"
    for argv in (
        ["run", str(path)],
        ["compare", str(path), "--out", str(out)],
        ["audit", str(path)],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "", argv
        err = captured.err
        assert "Traceback" not in err, argv
        lines = [line.removeprefix("pkvm-sim: ") for line in err.strip().splitlines()]
        # Every mistake in the file, one line each, each naming the file and a line.
        assert all(re.match(rf"{re.escape(str(path))}:\d+: ", m) for m in lines), (argv, err)
        expected = f"{path}:{line}: {field}: "
        assert any(m.startswith(expected) and text in m for m in lines), (argv, err)
        assert not out.exists(), argv
