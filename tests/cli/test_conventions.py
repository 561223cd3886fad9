"""Command-line conventions: `--json -` on stdout for every command, `--set` overrides,
`compare --format text` as a filter, tables that do not wrap when piped, `--out` a file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sim.cli import build_parser, main
from tests.cli.conftest import ROOT, SCENARIOS

SMALL = str(SCENARIOS / "small-vm.yaml")


def test_every_command_has_json():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        options = {s for a in sub._actions for s in a.option_strings}
        assert "--json" in options, name


def test_json_dash_is_stdout_and_the_tables_go_to_stderr(tiny, capsys):
    assert (
        main(["run", "--seeds", "1", str(tiny), "--proposal", "trusted-host", "--json", "-"]) == 0
    )
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # stdout is the JSON and nothing else
    assert [r["proposal"] for r in data["results"]] == ["trusted-host"]
    assert "translations kept" in captured.err
    assert not (ROOT / "-").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["scenarios"],
        ["its-save", "--devices", "1", "--events", "2"],
        ["audit", SMALL, "--proposal", "iommu-gated-its"],
    ],
)
def test_json_dash_works_for_other_commands(argv, capsys):
    main([*argv, "--json", "-"])
    data = json.loads(capsys.readouterr().out)
    assert data["provenance"]["tool"] == "pkvm-sim"


def test_set_overrides_a_field_and_is_validated_like_the_file(tiny, tmp_path, capsys):
    path = tmp_path / "r.json"
    argv = ["run", str(tiny), "--proposal", "trusted-host", "--seeds", "1", "--json", str(path)]
    assert main([*argv, "--set", "devices[0].vectors=7", "--set", "costs.tlbi_us=2.5"]) == 0
    data = json.loads(path.read_text())
    (result,) = data["results"]
    # 7 vectors on net0 and 2 on blk0: 9 translations where the file gives 5.
    assert result["correctness"]["expected_translations"] == 9
    assert result["cost_overrides"] == {"tlbi_us": 2.5}
    assert data["provenance"]["overrides"] == ["devices[0].vectors=7", "costs.tlbi_us=2.5"]
    assert data["provenance"]["scenarios"][0]["devices"][0]["vectors"] == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("guest.vcpus=abc", "--set guest.vcpus=abc: guest.vcpus: Input should be a valid integer"),
        ("guest.vcpu=4", "--set guest.vcpu=4: guest has no field 'vcpu' (it has: ram_mib"),
        ("devices[5].vectors=3", "--set devices[5].vectors=3: devices has 2 entries (0..1)"),
        ("costs.tlbi_us=-1", "costs.tlbi_us: Input should be greater than or equal to 0"),
        ("migration.at_ms=99", "migration.at_ms: expected a time before workload.duration_ms"),
        ("guest.vcpus", "--set 'guest.vcpus': expected FIELD=VALUE"),
    ],
)
def test_a_bad_set_names_the_override_and_exits_2(tiny, capsys, override, message):
    for command in ("run", "compare"):
        with pytest.raises(SystemExit) as exc:
            main([command, str(tiny), "--set", override])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert "Traceback" not in err and len(err.splitlines()) == 1


def test_compare_format_text_prints_only_the_summary_on_stdout(tiny, tmp_path, capsys):
    assert (
        main(
            [
                "compare",
                "--seeds",
                "1",
                "--cost-samples",
                "0",
                str(tiny),
                "--out",
                str(tmp_path),
                "--format",
                "text",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out == (tmp_path / "tiny" / "summary.txt").read_text()
    assert "compared 1 scenario: 2 runs with an honest host" in captured.err
    assert "wrote " in captured.err


def test_piped_tables_do_not_wrap_words():
    argv = ["audit", SMALL, "--attack", "secret-page-as-itt", "--proposal", "share-host-claims"]
    argv += ["--proposal", "iommu-gated-its", "--summary"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "sim.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("│ secret-page-as-itt")]
    assert len(rows) == 1, out  # one line: no cell wrapped onto a second
    assert "blocked: src.lowvisor: no host share hypercall (-ENOSYS)" in rows[0]
    assert "succeeded: read 2304 secret B, exposed 4608 more secret B," in rows[0]


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_an_out_that_is_a_file_is_refused_before_any_run(tiny, tmp_path, capsys, command):
    target = tmp_path / "afile"
    target.write_text("mine\n")
    argv = [command, str(tiny), "--out", str(target)]
    if command == "sweep":
        argv += ["--vary", "guest.vcpus=2,4", "--jobs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out {target}" in err and "is a file, expected a directory" in err
    assert target.read_text() == "mine\n"
