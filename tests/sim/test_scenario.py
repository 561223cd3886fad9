"""Scenario files: validation errors name file, line, field and expectation; exit 2."""

import textwrap

import pytest

from sim.cli import main
from sim.costs import CostModel
from sim.scenario import ALL_PROPOSALS, ScenarioError, load_scenario

GOOD = """\
name: tiny
question: does it load?
devices:
  - {name: net, device_id: 8, vectors: 3}
"""


def write(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_fill_everything_but_name_question_and_devices(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    assert s.guest.vcpus == 4 and s.guest.allocator == "linux-shared-pool"
    assert s.proposals == list(ALL_PROPOSALS) and len(s.proposals) == 8
    assert s.costs == CostModel()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (GOOD.replace("vectors: 3", "vectors: many"), ":4: devices[0].vectors: Input should be"),
        (
            GOOD.replace("vectors: 3", "vectors: 0"),
            ":4: devices[0].vectors: Input should be greater",
        ),
        (GOOD + "guest:\n  allocator: slab\n", ":6: guest.allocator: Input should be"),
        (GOOD + "costs:\n  tlbi_us: -1\n", ":6: costs.tlbi_us: Input should be greater than or"),
        (GOOD + "costs:\n  tlbi_ns: 1\n", ":6: costs.tlbi_ns: Extra inputs are not permitted"),
        (
            GOOD + "proposals: [share-everything]\n",
            ":5: proposals[0]: unknown proposal; expected one of 'trusted-host'",
        ),
        (GOOD + "migration: {at_ms: 50}\n", "migration.at_ms: expected a time before"),
        (GOOD.replace("question: does it load?\n", ""), ":1: question: Field required"),
        ("name: [unclosed\n", ":2: name[0]: not valid YAML"),
        ("- a list\n", ":1: (top level): expected a mapping of scenario fields, got list"),
    ],
)
def test_bad_scenarios_get_one_clear_message(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as exc:
        load_scenario(path)
    message = str(exc.value)
    assert message.startswith(str(path))
    assert where in message


def test_cli_exits_2_without_traceback_or_output_files(tmp_path, capsys):
    bad = write(tmp_path, GOOD.replace("vectors: 3", "vectors: many"))
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(bad), "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "devices[0].vectors" in err and "Traceback" not in err
    assert not out.exists()


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "nope.yaml")])
    assert exc.value.code == 2
    assert "cannot read" in capsys.readouterr().err
