"""Plugins by entry point: the worked example under examples/ is found by importlib.metadata
and usable by name in scenarios, `run`, `audit`, `compare` and the listings; broken or
clashing plugins are left out with a warning, everything else still works.

Each test runs pkvm-sim in a subprocess whose path holds the example's package and a
``.dist-info`` with its entry points, generated from the example's pyproject.toml (what
``pip install`` writes, without the copy; tests/test_install.py does the real install).
"""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pkvm-sim-example-plugin"
SCENARIO = EXAMPLE / "example.yaml"


def dist_info(where: Path, name: str, groups: dict[str, dict[str, str]]) -> None:
    """A minimal installed distribution: METADATA and entry_points.txt."""
    info = where / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    text = ""
    for group, eps in groups.items():
        text += f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
    (info / "entry_points.txt").write_text(text)


@pytest.fixture
def env(tmp_path):
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    dist_info(tmp_path / "site", meta["name"], meta["entry-points"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(EXAMPLE)])}


def pkvm_sim(env, *argv, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "sim.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_the_listings_name_the_plugins_with_their_parameters(env):
    proposals = json.loads(pkvm_sim(env, "proposals", "--json", "-").stdout)["proposals"]
    by_name = {p["name"]: p for p in proposals}
    plugin = by_name["share-guest-keeps-shared"]
    assert plugin["source"].startswith("pkvm-sim-example-plugin 0.1.0")
    assert plugin["protected"] is True and "never unshares" in plugin["summary"]
    assert by_name["trusted-host"]["source"] == "built-in"
    listing = json.loads(pkvm_sim(env, "attacks", "--json", "-").stdout)
    attacks = {a["kind"]: a for a in listing["attacks"]}
    (param,) = attacks["read-once"]["parameters"]
    assert param["name"] == "at_ms" and param["default"] == 5.0
    assert param["bounds"] == {"ge": 0.0, "le": 600_000.0}
    assert "its-dma" in attacks and attacks["its-dma"]["source"] == "built-in"


def test_a_plugin_proposal_and_behaviour_run_from_a_scenario(env, tmp_path):
    out = tmp_path / "run.json"
    pkvm_sim(env, "run", str(SCENARIO), "--json", str(out))
    data = json.loads(out.read_text())
    data = data["results"] if isinstance(data, dict) else data  # with provenance, or not
    results = {r["proposal"]: r for r in data}
    assert set(results) == {"share-enlightened-guest", "share-guest-keeps-shared"}
    built_in, plugin = results["share-enlightened-guest"], results["share-guest-keeps-shared"]
    assert plugin["host"] == "read-once(at_ms=8)"
    # The plugin's guest never unshares: no unshare hypercall, the freed ITT page stays
    # shared, so its secrets are exposed for longer than under the built-in.
    assert built_in["costs"]["pages_unshared"] > 0 == plugin["costs"]["pages_unshared"]
    assert plugin["exposure"]["exposed_byte_ms"] > built_in["exposure"]["exposed_byte_ms"]


def test_audit_takes_a_plugin_attack_with_parameters(env):
    argv = ["audit", str(SCENARIO), "--attack", "read-once:at_ms=12", "--attack", "its-dma"]
    proc = pkvm_sim(env, *argv, check=False)
    assert proc.returncode == 1, proc.stderr  # violations found: the host read secrets
    assert "read-once(at_ms=12)" in proc.stdout and "violations found" in proc.stdout
    bad = pkvm_sim(env, "audit", str(SCENARIO), "--attack", "read-once:at_ms=-1", check=False)
    assert bad.returncode == 2 and "at_ms" in bad.stderr and "Traceback" not in bad.stderr


def test_compare_runs_the_plugin_proposal_against_every_attack(env, tmp_path):
    pkvm_sim(env, "compare", str(SCENARIO), "--out", str(tmp_path))
    cells = json.loads((tmp_path / "example-plugin" / "matrix.json").read_text())
    cells = cells["example-plugin"]
    got = {(c["attack"], c["proposal"]): c for c in cells}
    assert ("read-once", "share-guest-keeps-shared") in got  # the plugin's attack is a row
    assert ("its-dma", "share-guest-keeps-shared") in got
    report = (tmp_path / "example-plugin" / "report.md").read_text()
    assert "share-guest-keeps-shared" in report


def test_an_unknown_name_lists_the_plugins_too(env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.read_text().replace("read-once", "read-twice"))
    proc = pkvm_sim(env, "run", str(bad), check=False)
    assert proc.returncode == 2
    assert "unknown behaviour kind 'read-twice'" in proc.stderr
    assert "'read-once'" in proc.stderr  # the valid kinds include the plugin's


def test_without_the_plugin_its_names_are_unknown(tmp_path):
    proc = pkvm_sim(dict(os.environ), "run", str(SCENARIO), check=False)
    assert proc.returncode == 2
    assert "proposals[1]: unknown proposal" in proc.stderr
    assert "host.behaviours[0].kind: unknown behaviour kind 'read-once'" in proc.stderr


def test_broken_and_clashing_plugins_are_left_out_with_a_warning(env, tmp_path):
    dist_info(
        tmp_path / "bad",
        "broken-plugin",
        {
            "pkvm_sim.proposals": {
                "missing": "no_such_module:Nope",
                "trusted-host": "sim.proposals.trusted_host:TrustedHost",
                "misnamed": "pkvm_sim_example.proposal:ShareGuestKeepsShared",
            },
            "pkvm_sim.behaviours": {"not-a-behaviour": "pkvm_sim_example.attack:ReadOnceSpec"},
        },
    )
    env["PYTHONPATH"] += os.pathsep + str(tmp_path / "bad")
    proc = pkvm_sim(env, "proposals", "--json", "-")
    names = [p["name"] for p in json.loads(proc.stdout)["proposals"]]
    assert "share-guest-keeps-shared" in names and "missing" not in names
    assert names.count("trusted-host") == 1
    # stderr: the warnings, then the table (--json - gives stdout to the JSON)
    warnings = [w for w in proc.stderr.splitlines() if w.startswith("pkvm-sim:")]
    assert len(warnings) == 4 and all(w.startswith("pkvm-sim: warning: plugin ") for w in warnings)
    assert any("'missing'" in w and "ModuleNotFoundError" in w for w in warnings)
    assert any("'trusted-host'" in w and "already taken" in w for w in warnings)
    assert any("'misnamed'" in w and "entry point's name" in w for w in warnings)
    assert any("subclass of sim.attacks.Behaviour" in w for w in warnings)
