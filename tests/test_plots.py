"""Plots: figures carry the result's numbers, stay readable with 100+ sites, and PNGs are written atomically."""

from __future__ import annotations

import dataclasses
import io

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

import deadrelu
from deadrelu.render import plots
from deadrelu.judge.verdicts import judge_site
from report_fixtures import synthetic_result, synthetic_stats
from truth_models import bounded_inputs, linear_with_dead_units

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small():
    import torch
    torch.manual_seed(0)
    model = linear_with_dead_units(dead=8, width=32)
    return deadrelu.scan(model, bounded_inputs(200, 10))


@pytest.fixture(scope="module")
def many():
    return synthetic_result(150, units=64)


def test_dead_ratio_by_layer_bars_are_the_dead_ratios(small):
    # issue 10: horizontal bars, names on the y axis, no empty saturated panel for a ReLU-only model.
    fig = plots.dead_ratio_by_layer(small)
    assert isinstance(fig, Figure)
    (axis,) = fig.axes
    dormant_bars, dead_bars = axis.containers
    assert [patch.get_width() for patch in dead_bars] == [0.25]
    assert [patch.get_width() for patch in dormant_bars] == [small.sites[0].dormant_ratio]
    assert [label.get_text() for label in axis.get_yticklabels()] == ["1"]
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == ["dormant (includes dead)", "dead (no gradient)"]
    assert fig._suptitle.get_text() == "WARN: 8 of 32 units dead (25.0%) over 1 sites"


def test_every_flagged_site_is_named_and_only_clean_ones_thinned():
    names = [f"backbone.stage{k // 10}.block{k % 10}.relu#{k % 3}" for k in range(120)]
    result = synthetic_result(120, units=64, names=names, dead_growing=False)
    flagged = {5: 3, 47: 10, 48: 1, 119: 30}
    sites = list(result.sites)
    for k, dead in flagged.items():
        site = sites[k]
        stats = synthetic_stats(64, dead)
        sites[k] = dataclasses.replace(site, kind="ReLU", saturation=None, stats=stats,
                                       verdict=judge_site(stats, None, result.settings.thresholds))
    result = dataclasses.replace(result, sites=tuple(sites))
    fig = plots.dead_ratio_by_layer(result)
    labels = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    assert {names[k] for k in flagged} <= set(labels)
    flagged_count = sum(1 for site in result.sites if site.dead or site.saturated)
    assert len(labels) == max(flagged_count, plots.MAX_TICK_LABELS) < 120, "clean sites thinned"
    ticks = list(fig.axes[0].get_yticks())
    assert all(ticks[labels.index(names[k])] == k for k in flagged), "each name sits at its own bar"
    heat = plots.active_rate_histogram(result)
    assert {names[k] for k in flagged} <= {label.get_text() for label in heat.axes[0].get_yticklabels()}


def test_dead_ratio_by_layer_with_150_sites_is_readable(many):
    fig = plots.dead_ratio_by_layer(many)
    dead_axis, saturated_axis = fig.axes  # ELU/ReLU6 sites saturate: the saturated panel is there
    # One filled step artist per series, values in network order.
    steps = {patch.get_label(): patch for patch in dead_axis.patches}
    values = steps["dead (no gradient)"].get_data().values
    from deadrelu.judge.overall import dead_no_gradient
    assert np.allclose(values, [dead_no_gradient(s) / s.units for s in many.sites])
    labels = [label.get_text() for label in dead_axis.get_yticklabels()]
    flagged = [s.name for s in many.sites if s.dead or s.saturated]
    assert set(flagged) <= set(labels), "every flagged site is named"
    width, height = fig.get_size_inches()
    assert width <= 12 and height <= 36
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert "never active (leaky: still has gradient)" in legend and "saturated (at floor / bound)" in legend
    png = plots.figure_png(fig)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000


def test_unit_map_legend_counts_what_is_painted():
    import torch
    from torch import nn
    torch.manual_seed(0)
    result = deadrelu.scan(linear_with_dead_units(dead=4, width=16, activation=nn.ELU()), bounded_inputs(200, 10))
    site = result.sites[0]
    fig = plots.unit_map(result, 0)
    marks = np.ma.filled(fig.axes[0].get_images()[1].get_array(), 0).reshape(-1)
    legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    # ELU is leaky: units that never fire but are not at the floor keep a gradient ("never active"), not "dead".
    assert legend == [f"never active (leaky) ({int((marks == 2).sum())})", f"saturated ({int((marks == 1).sum())})"]
    assert int((marks == 1).sum()) == site.saturated == 4


def test_rate_histogram_counts_dead_units_apart():
    rates = np.array([0.0, 0.0, 0.5, 1.0, 0.01, np.nan])
    counts = plots.rate_histogram(rates)
    assert counts[0] == 2 and counts.sum() == 5
    assert counts[1] == 1 and counts[-1] == 1
    assert counts[1 + int(0.5 * plots.RATE_BINS)] == 1
    assert len(plots.rate_bins()) == len(counts) + 1


def test_active_rate_histogram_overlay_for_few_sites(small):
    fig = plots.active_rate_histogram(small)
    axis = fig.axes[0]
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == ["1 (ReLU; 8 of 32 dead)"]
    step = axis.patches[0]
    assert step.get_data().values[0] == pytest.approx(8 / 32)


def test_active_rate_histogram_is_a_heat_map_for_many_sites(many):
    fig = plots.active_rate_histogram(many)
    mesh = fig.axes[0].collections[0]
    matrix = np.asarray(mesh.get_array()).reshape(len(many.sites), plots.RATE_BINS + 1)
    assert np.allclose(matrix.sum(axis=1), 1.0)
    assert np.allclose(matrix[:, 0], [s.never_fired / s.units for s in many.sites])  # never active, any kind
    labels = {label.get_text() for label in fig.axes[0].get_yticklabels()}
    assert {s.name for s in many.sites if s.never_fired or s.saturated} <= labels, "every flagged site named (issue 10)"


def test_unit_map_marks_exactly_the_dead_units(small):
    fig = plots.unit_map(small, "1")
    axis = fig.axes[0]
    rows, columns = plots.unit_grid(32)
    rates_image, marks_image = axis.get_images()
    assert rates_image.get_array().shape == (rows, columns)
    marks = np.ma.filled(marks_image.get_array(), 0).reshape(-1)
    assert np.flatnonzero(marks == 2).tolist() == list(range(8))
    assert "8 of 32 dead" in axis.get_title(loc="left")
    assert "saturated" not in axis.get_title(loc="left"), "ReLU does not saturate"


def test_unit_grid_holds_every_unit():
    for units in (1, 7, 32, 100, 100_000):
        rows, columns = plots.unit_grid(units)
        assert rows * columns >= units and (rows - 1) * columns < units


def test_figures_stay_out_of_pyplot(small):
    import matplotlib.pyplot as pyplot
    before = pyplot.get_fignums()
    plots.dead_ratio_by_layer(small)
    plots.unit_map(small, 0)
    assert pyplot.get_fignums() == before
    assert matplotlib.get_backend().lower() == "agg"


def test_names_with_dollar_signs_do_not_start_mathtext():
    result = synthetic_result(3, units=8, names=["a$b$c", "cost$", "$x^2$"])
    for fig in (plots.dead_ratio_by_layer(result), plots.unit_map(result, "a$b$c")):
        assert plots.figure_png(fig).startswith(PNG_SIGNATURE)


def test_write_pngs_writes_atomically_with_safe_names(tmp_path):
    names = ["<img src=x onerror=alert(1)>", "../../escape", "ok.relu"]
    result = synthetic_result(3, units=16, names=names)
    written = plots.write_pngs(result, tmp_path / "plots")
    assert [p.name for p in written[:2]] == ["dead_ratio_by_layer.png", "active_rate_histogram.png"]
    maps = sorted(p.name for p in written[2:])
    assert maps == ["unit_map_001_escape.png", "unit_map_002_ok.relu.png"]  # site 0 has no dead units
    for path in written:
        assert path.parent == tmp_path / "plots"
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in written), "no temp files"
    assert plots.safe_filename(names[0]) == "img_src_x_onerror_alert_1"


def test_write_pngs_caps_unit_maps_worst_first(tmp_path, many):
    written = plots.write_pngs(many, tmp_path, max_unit_maps=2)
    assert len(written) == 4
    # issue 20: unit maps come in the tables' order (level, then share never firing), one order everywhere.
    from deadrelu.judge.overall import worst_sites
    worst = [next(k for k, site in enumerate(many.sites) if site is chosen) for chosen in worst_sites(many)]
    assert [p.name[:13] for p in written[2:]] == [f"unit_map_{worst[0]:03d}_", f"unit_map_{worst[1]:03d}_"]
    chosen = plots.write_pngs(many, tmp_path / "chosen", sites=[5])
    assert [p.name for p in chosen[2:]] == [f"unit_map_005_{plots.safe_filename(many.sites[5].name)}.png"]


def test_png_decodes_to_the_figure_size(small):
    from matplotlib.image import imread
    fig = plots.active_rate_histogram(small)
    image = imread(io.BytesIO(plots.figure_png(fig, dpi=50)), format="png")
    width, height = fig.get_size_inches()
    assert image.shape[:2] == (round(height * 50), round(width * 50))


def test_unit_map_shows_elu_floor_units_as_saturated():
    import torch
    from torch import nn
    torch.manual_seed(0)
    result = deadrelu.scan(linear_with_dead_units(dead=4, width=16, activation=nn.ELU()), bounded_inputs(200, 10))
    site = result.sites[0]
    assert site.verdict.dead_units[:4] == [0, 1, 2, 3] and site.verdict.saturated_units == [0, 1, 2, 3]
    marks = np.ma.filled(plots.unit_map(result, 0).axes[0].get_images()[1].get_array(), 0).reshape(-1)
    assert np.flatnonzero(marks == 1).tolist() == [0, 1, 2, 3]


def test_result_plot_is_the_overview_figure(small):
    fig = small.plot()
    assert isinstance(fig, Figure)
    assert [label.get_text() for label in fig.axes[0].get_yticklabels()] == ["1"]


LONG_NAMES = [f"feature_backbone.residual_stage_{k}.pointwise_act" for k in range(4)]


def test_long_names_are_wrapped_never_cut():
    # issue 22: labels were cut to 32 characters (`feature_backb…pointwise_act`); a 47-character name is
    # wrapped over lines, and its lines joined are the name, in every figure that names sites.
    assert all(len(name) == 47 for name in LONG_NAMES)
    result = synthetic_result(4, units=64, names=LONG_NAMES, dead_growing=True)

    def joined(labels) -> set[str]:
        return {label.get_text().replace("\n", "") for label in labels}

    bars = plots.dead_ratio_by_layer(result)
    assert set(LONG_NAMES) <= joined(bars.axes[0].get_yticklabels())
    assert all("…" not in label.get_text() for label in bars.axes[0].get_yticklabels())
    assert max(len(line) for label in bars.axes[0].get_yticklabels() for line in label.get_text().split("\n")) <= 32
    overlay = plots.active_rate_histogram(result)
    legend = joined(overlay.legends[0].get_texts())
    assert all(any(text.startswith(name + " (") for text in legend) for name in LONG_NAMES)
    for figure in (bars, overlay):   # and nothing drawn past the figure's edges
        figure.canvas.draw()
        box, frame = figure.legends[0].get_window_extent(), figure.bbox
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0, (box, frame)
    many = synthetic_result(12, units=16, names=[f"{name}.{k}" for k in range(3) for name in LONG_NAMES])
    assert {s.name for s in many.sites} <= joined(plots.active_rate_histogram(many).axes[0].get_yticklabels())
    assert plots.unit_map(result, LONG_NAMES[0]).axes[0].get_title(loc="left").replace("\n", "").startswith(
        LONG_NAMES[0] + " (")
    # The figure grows to hold the wrapped labels: two lines of room per row.
    width, height = bars.get_size_inches()
    assert height >= plots.ROW_INCHES * 4 * 2


def test_wrap_name_breaks_after_separators_and_keeps_every_character():
    assert plots.wrap_name("layer1.0.relu") == "layer1.0.relu"
    assert plots.wrap_name(LONG_NAMES[0]) == "feature_backbone.residual_stage_\n0.pointwise_act"
    no_breaks = "x" * 70
    assert plots.wrap_name(no_breaks).split("\n") == ["x" * 32, "x" * 32, "x" * 6]
    for name in (LONG_NAMES[0], no_breaks, "a.b:c#d_e/f" * 9):
        assert plots.wrap_name(name, 10).replace("\n", "") == name
        assert max(len(line) for line in plots.wrap_name(name, 10).split("\n")) <= 10
