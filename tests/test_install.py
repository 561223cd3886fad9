"""`pip install .` as a user does it: wheels of pkvm-sim and of the example plugin into a
fresh virtualenv, then the commands from a directory that is not the checkout.

Slow (a venv and its dependencies): marked ``install``, deselected by default; .ci/run
runs it (``pytest -m install``).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pkvm-sim-example-plugin"

pytestmark = pytest.mark.install


def sh(*argv, cwd=None, check=True):
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=1200
    )
    if check:
        assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    wheels = tmp / "wheels"
    for project in (ROOT, EXAMPLE):
        sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, project)
    sh(sys.executable, "-m", "venv", tmp / "venv")
    pip = tmp / "venv" / "bin" / "pip"
    sh(pip, "install", "-q", *sorted(wheels.glob("*.whl")))
    work = tmp / "work"  # not the checkout: nothing found by a relative path
    work.mkdir()
    return tmp / "venv" / "bin", work


def test_the_wheel_ships_scenarios_license_and_types(venv):
    bin_, work = venv
    code = (
        "import importlib.metadata as m, importlib.resources as r, json, sim;"
        "d = m.distribution('pkvm-sim');"
        "print(json.dumps({'version': sim.__version__, 'meta': d.version,"
        " 'license': any(f.name == 'LICENSE' for f in d.files),"
        " 'typed': (r.files('sim') / 'py.typed').is_file(),"
        " 'scenarios': sorted(p.name for p in (r.files('sim') / 'data' / 'scenarios').iterdir()),"
        " 'vmm': (r.files('sim') / 'oracle' / 'vmm' / 'vmm.c').is_file(),"
        " 'real_guests': len(list((r.files('sim') / 'data' / 'real-guests').iterdir()))}))"
    )
    got = json.loads(sh(bin_ / "python", "-c", code, cwd=work).stdout)
    assert got["version"] == got["meta"] != "0+unknown"
    assert got["license"] and got["typed"] and got["vmm"] and got["real_guests"] >= 4
    assert got["scenarios"] == sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml"))
    license_text = (ROOT / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in license_text and "Version 2, June 1991" in license_text


def test_installed_commands_find_the_bundled_scenarios(venv):
    bin_, work = venv
    assert sh(bin_ / "pkvm-sim", "--version", cwd=work).stdout.startswith("pkvm-sim 0.1")
    listed = sh(bin_ / "pkvm-sim", "scenarios", cwd=work).stdout.splitlines()
    names = [line.split()[0] for line in listed]
    assert "small-vm" in names and len(names) == len(list((ROOT / "scenarios").glob("*.yaml")))
    run = sh(bin_ / "pkvm-sim", "run", "small-vm", "--proposal", "trusted-host", cwd=work)
    assert "small-vm (8 seeds 1-8: median [min-max])" in run.stdout
    assert "ITS correct" in run.stdout
    # compare with no scenario: every bundled one, from the package data (one seed, no
    # sensitivity section, to keep the test short; the README's full run is in test_compare).
    out = work / "bundled-reports"
    sh(bin_ / "pkvm-sim", "compare", "--seeds", "1", "--cost-samples", "0", "--out", out, cwd=work)
    report = (out / "bundled" / "report.md").read_text()
    assert report.count("\n## Scenario `") == len(names)


def test_pyarrow_is_only_in_the_sweep_extra(venv):
    bin_, work = venv
    probe = "import importlib.util; print(importlib.util.find_spec('pyarrow') is None)"
    assert sh(bin_ / "python", "-c", probe, cwd=work).stdout.strip() == "True"
    proc = sh(
        bin_ / "pkvm-sim",
        "sweep",
        "small-vm",
        "--vary",
        "seed=1,2",
        "--out",
        work / "s",
        cwd=work,
        check=False,
    )
    assert proc.returncode == 2 and "pkvm-sim[sweep]" in proc.stderr
    assert "Traceback" not in proc.stderr and not (work / "s").exists()


def test_the_installed_example_plugin_runs_in_compare(venv):
    bin_, work = venv
    listing = json.loads(sh(bin_ / "pkvm-sim", "proposals", "--json", "-").stdout)
    names = [p["name"] for p in listing["proposals"]]
    assert "share-guest-keeps-shared" in names
    out = work / "reports"
    sh(bin_ / "pkvm-sim", "compare", EXAMPLE / "example.yaml", "--out", out, cwd=work)
    results = json.loads((out / "example-plugin" / "results.json").read_text())
    results = results["results"] if isinstance(results, dict) else results  # with provenance
    assert {r["proposal"] for r in results} == {
        "share-enlightened-guest",
        "share-guest-keeps-shared",
    }
