"""Plots: figures carry the result's numbers, stay readable with 100+ sites, and PNGs are written atomically."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

import deadrelu
from deadrelu.render import plots
from report_fixtures import synthetic_result
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
    fig = plots.dead_ratio_by_layer(small)
    assert isinstance(fig, Figure)
    dead_axis, saturated_axis, dormant_axis = fig.axes
    assert [patch.get_height() for patch in dead_axis.patches] == [0.25]
    assert [patch.get_height() for patch in dormant_axis.patches] == [small.sites[0].dormant_ratio]
    assert [label.get_text() for label in dormant_axis.get_xticklabels()] == ["1"]
    texts = [t.get_text() for t in saturated_axis.texts]
    assert any("no saturating kinds" in text for text in texts)
    assert "8 of 32 units dead (25.0%)" in dead_axis.get_title(loc="left")


def test_dead_ratio_by_layer_with_150_sites_is_readable(many):
    fig = plots.dead_ratio_by_layer(many)
    dead_axis = fig.axes[0]
    # One filled step artist per panel, heights in network order.
    steps = [artist for artist in dead_axis.patches]
    assert len(steps) == 1
    values = steps[0].get_data().values
    assert np.allclose(values, [s.dead_ratio for s in many.sites])
    labels = [label.get_text() for label in fig.axes[-1].get_xticklabels()]
    assert 10 <= len(labels) <= plots.MAX_TICK_LABELS
    assert labels[0] == many.sites[0].name and labels[-1] == many.sites[-1].name
    width, height = fig.get_size_inches()
    assert width <= 22 and height < 10
    assert "40 of 150 names shown" in fig.axes[-1].get_xlabel()
    png = plots.figure_png(fig)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000


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
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert legend == ["1 (ReLU; 8 of 32 dead)"]
    step = axis.patches[0]
    assert step.get_data().values[0] == pytest.approx(8 / 32)


def test_active_rate_histogram_is_a_heat_map_for_many_sites(many):
    fig = plots.active_rate_histogram(many)
    mesh = fig.axes[0].collections[0]
    matrix = np.asarray(mesh.get_array()).reshape(len(many.sites), plots.RATE_BINS + 1)
    assert np.allclose(matrix.sum(axis=1), 1.0)
    assert np.allclose(matrix[:, 0], [s.dead_ratio for s in many.sites])
    assert len(fig.axes[0].get_yticklabels()) <= plots.MAX_TICK_LABELS


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
    worst = sorted(range(len(many.sites)), key=lambda k: -(many.sites[k].dead_ratio + many.sites[k].saturated_ratio))
    assert written[2].name.startswith(f"unit_map_{worst[0]:03d}_")
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
