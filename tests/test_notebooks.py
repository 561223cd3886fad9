"""Every notebook in notebooks/ runs top to bottom without error, is committed with its
outputs stripped, and draws with the package's charts in the report's words."""

import ast
import re
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

from sim.report.charts import OUTCOMES
from sim.scenario import ATTACKS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# The package's chart functions each notebook draws with (sim.report.charts, sim.sweep).
DRAWS_WITH = {
    "01-sharing-vs-serialization": {"bar_chart"},
    "02-attack-matrix": {"matrix_chart", "run_sweep", "write_charts"},
}
# Words of its own for an outcome of sim.matrix (the report says succeeded, availability,
# blocked): as notebook 02 once printed and drew them.
NOT_THE_REPORTS_WORDS = re.compile(r"\bsuccess\b|\bavail\b\.?|\bSUCCEEDED\b|\bn/a\b")


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def code(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def output_text(nb) -> str:
    """What the executed notebook printed or displayed as text."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            out.append(o.get("text", ""))
            data = o.get("data", {})
            out += [data.get("text/plain", ""), data.get("text/markdown", "")]
    return "\n".join(out)


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, nbformat.NotebookNode]:
    """Each notebook run top to bottom once, in a 'python3' kernel that runs this
    interpreter, found before any other: a kernelspec elsewhere on the machine
    (~/.local/share/jupyter, /usr/share/jupyter) may start a Python without the project
    installed."""
    jupyter = tmp_path_factory.mktemp("jupyter")
    spec = jupyter / "kernels" / "python3"
    write_kernel_spec(path=str(spec))
    assert sys.executable in (spec / "kernel.json").read_text()
    done = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(jupyter))
        for path in notebooks():
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(
                nb,
                timeout=300,
                kernel_name="python3",
                resources={"metadata": {"path": str(NOTEBOOKS)}},
            )
            client.execute()  # raises CellExecutionError on the first cell that fails
            done[path.stem] = nb
    return done


def test_there_are_at_least_two_notebooks():
    assert len(notebooks()) >= 2


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.get("outputs", []) == [], f"{path.name}: outputs not stripped"
            assert cell.get("execution_count") is None, f"{path.name}: execution_count set"


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, executed):
    nb = executed[path.stem]
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors
    # Every code cell ran, and the charts were drawn.
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    images = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if "image/png" in out.get("data", {})
    ]
    assert images, f"{path.name}: no chart was drawn"


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_draws_with_the_packages_charts_not_its_own(path):
    """No matplotlib of its own, no colours of its own: the charts are the report's."""
    source = code(nbformat.read(path, as_version=4))
    tree = ast.parse(source)
    imported = {
        alias.asname or alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    modules = {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
    modules |= {m for m in imported.values() if m}
    assert not [m for m in modules if m.split(".")[0] in ("matplotlib", "seaborn", "numpy")]
    assert not re.findall(r"#[0-9A-Fa-f]{6}\b", source), "a colour of its own"
    called = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    wanted = DRAWS_WITH[path.stem]
    assert wanted <= called
    assert {imported[f] for f in wanted} <= {"sim.report.charts", "sim.sweep"}


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_says_outcomes_in_the_reports_words(path, executed):
    source = nbformat.read(path, as_version=4)
    for text in (code(source), output_text(executed[path.stem])):
        assert not NOT_THE_REPORTS_WORDS.findall(text)


def test_the_attack_matrix_notebook_prints_each_cell_in_sim_matrix_words(executed):
    """The table's rows: an attack's name at the start of the line, one word per cell."""
    printed = output_text(executed["02-attack-matrix"]).splitlines()
    rows = {
        line.split()[0]: line.split()[1:]
        for line in printed
        if line[:1].strip() and line.split()[0] in ATTACKS
    }
    assert set(rows) == set(ATTACKS)
    assert len({len(row) for row in rows.values()}) == 1
    words = {w for row in rows.values() for w in row}
    assert words <= set(OUTCOMES) and "succeeded" in words
