"""The sweep's charts draw what the rows say: categories as categories (dodged markers,
no connecting line), numbers on a number line, each point the mean of the runs its
caption counts, and the least to greatest run as its error bar."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.text import Text

import sim
from sim.report.charts import proposal_colour
from sim.scenario import Scenario
from sim.sweep import CHART_METRICS, parse_vary, run_sweep, write_charts

TINY = """\
name: tiny
question: Does a sweep chart say what it draws?
seed: 3
guest: {ram_mib: 256, vcpus: 2}
devices:
  - {name: net0, device_id: 8, vectors: 3, rate_hz: 2000}
  - {name: blk0, device_id: 16, vectors: 2, rate_hz: 500}
workload: {duration_ms: 4, affinity_moves_per_s: 200}
migration: {at_ms: 2}
proposals: [trusted-host, share-host-claims, userspace-serialization]
"""


@pytest.fixture
def drawn(monkeypatch) -> dict[str, Figure]:
    """Every figure write_charts saves, by file name."""
    figures: dict[str, Figure] = {}
    save = Figure.savefig

    def keep(self, path, *args, **kwargs):
        figures[Path(path).name] = self
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def sweep_of(*varies: str, seeds: int = 2):
    base = Scenario.model_validate(yaml.safe_load(TINY))
    return run_sweep(base, [parse_vary(v) for v in varies], seeds=seeds, jobs=1)


def series(ax) -> dict[str, ErrorbarContainer]:
    return {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}


def spans(container: ErrorbarContainer) -> list[tuple[float, float, float]]:
    """(x, low, high) of each error bar."""
    (bars,) = container.lines[2]
    return [(seg[0][0], seg[0][1], seg[1][1]) for seg in bars.get_segments()]


def expected(rows, field, value, proposal, metric) -> tuple[float, float, float]:
    vals = [r[metric] for r in rows if r[field] == value and r["proposal"] == proposal]
    return sum(vals) / len(vals), min(vals), max(vals)


def test_a_string_field_is_drawn_as_categories_with_dodged_markers_and_the_spread(tmp_path, drawn):
    sweep = sweep_of(
        "guest.allocator=linux-kzalloc,linux-shared-pool", "guest.secret_density=0,0.5"
    )
    write_charts(sweep, tmp_path)
    fig = drawn["vs-guest-allocator.png"]
    categories = ["linux-kzalloc", "linux-shared-pool"]
    proposals = ["trusted-host", "share-host-claims", "userspace-serialization"]
    axes = [ax for ax in fig.axes if series(ax)]
    assert len(axes) == len(CHART_METRICS)
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == categories
    for ax, (metric, _, _) in zip(axes, CHART_METRICS, strict=True):
        drawn_series = series(ax)
        assert list(drawn_series) == proposals
        xs_at: dict[int, set[float]] = {0: set(), 1: set()}
        for proposal, container in drawn_series.items():
            line = container.lines[0]
            assert line.get_linestyle() == "None", "categories have no order to connect"
            assert line.get_color() == proposal_colour(proposal)
            for i, (x, y) in enumerate(zip(line.get_xdata(), line.get_ydata(), strict=True)):
                assert i - 0.5 < x < i + 0.5
                xs_at[i].add(round(float(x), 9))
                mean, low, high = expected(
                    sweep.rows, "guest.allocator", categories[i], proposal, metric
                )
                assert y == pytest.approx(mean)
                bx, blow, bhigh = spans(container)[i]
                assert bx == pytest.approx(x)
                assert (blow, bhigh) == (pytest.approx(low), pytest.approx(high))
        # Dodged: no two proposals share an x within a category.
        assert all(len(xs) == len(proposals) for xs in xs_at.values())
    # Some point really has a spread to show (the secret density moves the exposure).
    exposure = series(axes[-1])["trusted-host"]
    assert any(high > low for _, low, high in spans(exposure))
    words = " ".join(fig.get_suptitle().split())
    assert (
        "each point: mean of 4 runs: 2 seeds (3, 4) x 2 values of guest.secret_density (0.0, 0.5)"
        in words
    )
    assert "least to greatest" in words


def test_a_boolean_field_is_a_category_too(tmp_path, drawn):
    sweep = sweep_of("guest.two_level_device_table=true,false", seeds=1)
    write_charts(sweep, tmp_path)
    fig = drawn["vs-guest-two-level-device-table.png"]
    ax = [ax for ax in fig.axes if series(ax)][-1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["True", "False"]
    assert all(c.lines[0].get_linestyle() == "None" for c in series(ax).values())
    words = " ".join(fig.get_suptitle().split())
    assert "each point: one run (seed 3); no spread to show" in words


def test_a_numeric_field_keeps_its_number_line_and_lines(tmp_path, drawn):
    sweep = sweep_of("devices[0].vectors=3,7,8", "guest.allocator=linux-kzalloc,linux-shared-pool")
    write_charts(sweep, tmp_path)
    fig = drawn["vs-devices-0-vectors.png"]
    ax = next(ax for ax in fig.axes if series(ax))
    for proposal, container in series(ax).items():
        line = container.lines[0]
        assert line.get_linestyle() == "-"
        xs = line.get_xdata()
        # On the number line, set apart from the value by less than a tenth of the gap.
        assert [round(float(x)) for x in xs] == [3, 7, 8]
        assert all(abs(x - v) < 0.1 for x, v in zip(xs, (3, 7, 8), strict=True))
        for (x, low, high), v in zip(spans(container), (3, 7, 8), strict=True):
            _, lo, hi = expected(sweep.rows, "devices[0].vectors", v, proposal, CHART_METRICS[0][0])
            assert x == pytest.approx(float(line.get_xdata()[(3, 7, 8).index(v)]))
            assert (low, high) == (pytest.approx(lo), pytest.approx(hi))
    words = " ".join(fig.get_suptitle().split())
    assert (
        "mean of 4 runs: 2 seeds (3, 4) x 2 values of guest.allocator"
        " (linux-kzalloc, linux-shared-pool)" in words
    )


def test_axis_labels_say_log_scale_never_symlog(tmp_path, drawn):
    sweep = sweep_of("guest.secret_density=0,1", seeds=1)
    write_charts(sweep, tmp_path)
    (fig,) = drawn.values()
    texts = [t.get_text() for t in fig.findobj(Text)]
    assert not [t for t in texts if "symlog" in t]
    assert any(t == "peak secret B exposed (log scale)" for t in texts)


def test_no_user_visible_string_in_the_package_says_symlog():
    """'symlog' may name matplotlib's scale in a set_yscale call, never a label."""
    root = Path(sim.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        allowed = {
            id(call.args[0])
            for call in ast.walk(tree)
            if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in ("set_yscale", "set_xscale")
            and call.args
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and "symlog" in node.value
                and id(node) not in allowed
            ):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not found
