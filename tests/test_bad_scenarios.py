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


# ---- files the corpus cannot hold, and several mistakes at once -----------------------------

GOOD = """\
name: good
question: does it load?
devices:
  - {name: net0, device_id: 8, vectors: 3}
"""

ALIAS_BOMB = "".join(
    f"{a}: &{a} [{', '.join([f'*{p}' if p else 'x'] * 9)}]\n"
    for a, p in zip("abcdefghijkl", ["", *"abcdefghijk"], strict=True)
)


def errors_of(capsys, argv) -> list[str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    return [line.removeprefix("pkvm-sim: ") for line in captured.err.strip().splitlines()]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name: caf\xe9\n", ":1: (top level): not UTF-8 text: byte 0xe9 at column 10"),
        (GOOD.encode() + b"\n\n# \xff\n", ":7: (top level): not UTF-8 text: byte 0xff at column 3"),
        (b"", ":1: (top level): expected a mapping of scenario fields, got nothing"),
        (b"seed: " + b"[" * 3000 + b"]" * 3000 + b"\n", ":1: seed[0][0][0]...: nested deeper"),
        (ALIAS_BOMB.encode(), ":1: (top level): more than 100,000 values once its aliases"),
    ],
    ids=["latin-1", "non-utf8-comment", "zero-bytes", "deep-nesting", "alias-bomb"],
)
def test_unreadable_files_get_one_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "s.yaml"
    path.write_bytes(content)
    (line,) = errors_of(capsys, ["run", str(path)])
    assert line.startswith(f"{path}{message}"), line


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    """Twelve lines, 9^12 values expanded: today's duplicate-key walk never ends."""
    import subprocess
    import sys
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sim.cli", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "aliases are expanded" in proc.stderr
    assert time.monotonic() - start < 300


def test_a_directory_is_not_a_scenario(tmp_path, capsys):
    assert errors_of(capsys, ["run", str(tmp_path)]) == [
        f"{tmp_path}: is a directory; expected a scenario YAML file"
    ]


def test_every_mistake_in_a_file_is_reported_in_one_run(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: Bad_Name\n"  # 1
        "question: q\n"
        "guest: {vcpus: 0, ram_mib: 32}\n"  # 3: two mistakes
        "devices:\n"
        "  - {name: net0, device_id: 8, vectors: 3, rate_hz: .inf}\n"  # 5
        "  - {name: blk0, device_id: 70000, vectors: 2}\n"  # 6
        "costs: {tlbi_us: -1, memcpy_gbps: 0}\n"  # 7: two mistakes
        "proposals: [trusted-host, no-such]\n"  # 8
        "seed: 1\n"
        "seed: 2\n"  # 10: duplicate
    )
    lines = errors_of(capsys, ["run", str(path)])
    where = [line.removeprefix(f"{path}:").split(": ")[:2] for line in lines]
    assert where == [
        ["1", "name"],
        ["3", "guest.ram_mib"],
        ["3", "guest.vcpus"],
        ["5", "devices[0].rate_hz"],
        ["6", "devices[1].device_id"],
        ["7", "costs.tlbi_us"],
        ["7", "costs.memcpy_gbps"],
        ["8", "proposals[1]"],
        ["10", "seed"],
    ]


def test_every_cross_field_mistake_is_reported_in_one_run(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(
        GOOD
        + "  - {name: net0, device_id: 8, vectors: 2}\n"  # 5: name and id again
        + "workload:\n"
        + "  duration_ms: 20\n"
        + "  churn:\n"
        + "    - {at_ms: 1, device: net0, action: add}\n"  # 9
        + "    - {at_ms: 30, device: net0, action: remove}\n"  # 10
        + "migration: {at_ms: 25}\n"  # 11
        + "proposals: [trusted-host, trusted-host]\n"  # 12
    )
    lines = errors_of(capsys, ["run", str(path)])
    where = [line.removeprefix(f"{path}:").split(": ")[:2] for line in lines]
    assert where == [
        ["5", "devices[1].name"],
        ["5", "devices[1].device_id"],
        ["9", "workload.churn[0].action"],
        ["10", "workload.churn[1].at_ms"],
        ["11", "migration.at_ms"],
        ["12", "proposals[1]"],
    ]


def test_compare_refuses_two_scenarios_of_one_name(tmp_path, capsys):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(GOOD)
    b.write_text(GOOD.replace("vectors: 3", "vectors: 4"))
    out = tmp_path / "out"
    assert errors_of(capsys, ["compare", str(a), str(b), "--out", str(out)]) == [
        f"{b}: name: 'good' is also the name of {a}; expected each scenario under its own name"
    ]
    assert not out.exists()


def test_a_bundled_scenario_is_found_by_its_listed_name(capsys):
    from sim.scenario import BUNDLED, load_scenario

    assert load_scenario("small-vm") == load_scenario(BUNDLED / "small-vm.yaml")
    assert load_scenario("small-vm.yaml").name == "small-vm"
    lines = errors_of(capsys, ["run", "no-such-scenario"])
    assert lines == ["no-such-scenario: cannot read: No such file or directory"]


def test_cross_field_mistakes_are_reported_beside_field_mistakes(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\n"
        "question: q\n"
        "guest: {vcpus: 0}\n"  # 3: field
        "devices:\n"
        "  - {name: a, device_id: 1, vectors: 2, rate_hz: -5}\n"  # 5: field
        "  - {name: a, device_id: 2, vectors: 2}\n"  # 6: cross-field, name again
        "workload:\n"
        "  duration_ms: -1\n"  # 8: field
        "  churn:\n"
        "    - {at_ms: 1, device: a, action: add}\n"  # 10: cross-field, present
        "migration: {at_ms: 15}\n"  # against a bad duration: not judged
        "proposals: [trusted-host, trusted-host]\n"  # 12: cross-field, twice
    )
    lines = errors_of(capsys, ["run", str(path)])
    where = [line.removeprefix(f"{path}:").split(": ")[:2] for line in lines]
    assert where == [
        ["3", "guest.vcpus"],
        ["5", "devices[0].rate_hz"],
        ["6", "devices[1].name"],
        ["8", "workload.duration_ms"],
        ["10", "workload.churn[0].action"],
        ["12", "proposals[1]"],
    ]


def test_cross_field_checks_wait_for_a_required_field(tmp_path, capsys):
    """A bad value with no default cannot be left out: only the field mistakes, then."""
    path = tmp_path / "s.yaml"
    path.write_text(
        GOOD.replace("vectors: 3", "vectors: 0") + "proposals: [trusted-host, trusted-host]\n"
    )
    lines = errors_of(capsys, ["run", str(path)])
    assert [line.removeprefix(f"{path}:").split(": ")[:2] for line in lines] == [
        ["4", "devices[0].vectors"]
    ]


def test_mutated_bundled_scenarios_load_or_get_messages_never_a_traceback(tmp_path):
    """Seeded fuzz of the loader: a few random edits to each bundled scenario (YAML
    punctuation, anchors, tags, non-finite numbers, deletions, copies) either load or
    raise ScenarioError with every line naming the file, at once. A collection used as a
    mapping key made the parse-path walk pop an empty stack (IndexError on main)."""
    import random

    from sim.scenario import BUNDLED, ScenarioError, load_scenario

    texts = [p.read_text() for p in sorted(BUNDLED.glob("*.yaml"))]
    pieces = [*":-[]{}&*!|>'\",#?\n\t 019.e+x", "- ", ": ", "&a ", "*a", "!!", ".inf", "? "]
    rng = random.Random(15)
    path = tmp_path / "s.yaml"
    refused = 0
    for _ in range(600):
        text = rng.choice(texts)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(text) + 1)
            op = rng.random()
            if op < 0.4:
                text = text[:at] + rng.choice(pieces) + text[at:]
            elif op < 0.7:
                text = text[:at] + text[at + rng.randint(1, 8) :]
            else:
                src = rng.randrange(len(text) + 1)
                text = text[:at] + text[src : src + rng.randint(1, 30)] + text[at:]
        path.write_text(text)
        try:
            load_scenario(path)
        except ScenarioError as exc:
            refused += 1
            assert exc.errors and all(e.startswith(f"{path}:") for e in exc.errors), exc.errors
    assert refused > 300  # most edits break something, and each said what


def test_a_collection_as_a_mapping_key_is_named(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(
        GOOD + "  - {name: b, device_id: 9, vectors: 3}: 1\nworkload:\n  x: 1\nseed: [2\n"
    )
    (line,) = errors_of(capsys, ["run", str(path)])
    assert line.startswith(f"{path}:9: seed[0]: not valid YAML")
