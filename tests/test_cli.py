"""The pkvm-sim command line: output derived from the model, clear errors on bad input."""

import pytest

from sim.cli import main


def test_its_save_shows_protected_save_faulting_on_private_itt(capsys):
    assert main(["its-save", "--devices", "2", "--events", "4"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    # Non-protected: every event mapped, tables saved, no fault.
    assert rows["non-protected"][1:5] == ["8", "0", "ok", "0"]
    # Protected mainline guest: commands work (the queue is shared), the save faults
    # on the first ITT write, which sits in guest-private memory.
    assert rows["protected"][1:5] == ["8", "0", "-EFAULT", "1"]
    assert "write of 32 bytes at 0x41000000" in out  # the 4 ITEs, one run
    assert "host stage-2 state is nopage" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["its-save", "--devices", "0"], "--devices: expected 1..65536"),
        (["its-save", "--events", "70000"], "--events: expected 1..65536"),
        (["its-save", "--devices", "300", "--events", "300"], "at most 57344 LPIs"),
        (["its-save", "--devices", "x"], "invalid int value"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_version_is_the_installed_distribution_s(capsys):
    from importlib.metadata import version

    import sim

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"pkvm-sim {version('pkvm-sim')}\n"
    assert sim.__version__ == version("pkvm-sim")


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["its-save", "--help"])
    assert "example:" in capsys.readouterr().out


def test_every_command_help_has_an_example(capsys):
    from sim.cli import COMMANDS, build_parser

    parser = build_parser()
    names = [a for a in parser._subparsers._group_actions[0].choices]
    assert len(names) == len(COMMANDS)
    for name in names:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert "example" in capsys.readouterr().out, name


def test_scenarios_json_lists_every_bundled_one_by_the_name_run_takes(capsys):
    import json

    from sim.scenario import BUNDLED, load_scenario

    assert main(["scenarios", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)["scenarios"]
    assert [r["name"] for r in rows] == sorted(p.stem for p in BUNDLED.glob("*.yaml"))
    for row in rows:
        assert load_scenario(row["name"]).question == row["question"]
