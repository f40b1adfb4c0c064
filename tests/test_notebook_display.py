"""The notebook view displays by itself: ``result.plot()`` as a PNG without ``%matplotlib
inline``, ``result.report()`` as the full HTML report inline, and the view's bar strip says
what its bars and colours mean. The notebook is executed for real with nbconvert."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.render.notebook import result_html, sparkline_legend

ROOT = Path(__file__).resolve().parents[1]


def _dead_relu_model() -> nn.Sequential:
    """Exactly 3 of 8 ReLU units dead (bias -100 on inputs in [-1, 1])."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].weight.clamp_(-1, 1)
        model[0].bias[:3] = -100.0
    return model


def test_plot_displays_itself_and_still_saves(tmp_path) -> None:
    result = deadrelu.scan(_dead_relu_model(), torch.rand(64, 4) * 2 - 1)
    assert result.summary.dead == 3
    figure = result.plot()
    png = figure._repr_png_()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    figure.savefig(tmp_path / "plot.png")  # a script's way still works
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")


def test_report_displays_the_full_report_inline_and_saves(tmp_path) -> None:
    result = deadrelu.scan(_dead_relu_model(), torch.rand(64, 4) * 2 - 1)
    inline = result.report()
    fragment = inline._repr_html_()
    assert fragment.startswith("<style>") and '<div class="deadrelu-report">' in fragment
    assert "<html" not in fragment and "<body" not in fragment and "Sites, worst first" in fragment
    assert inline.save(tmp_path / "r.html").read_text() == str(inline)
    assert "result.report()" in result._repr_html_()  # the view's hint points to it
    assert "deadrelu.render.html.report(result)" not in result._repr_html_()


def test_the_bar_strip_is_labelled_and_the_leaky_colour_explained() -> None:
    relu = deadrelu.scan(_dead_relu_model(), torch.rand(64, 4) * 2 - 1)
    legend = sparkline_legend(relu)
    assert "one per site, network order" in legend and "dead or saturated share" in legend
    assert "never active" not in legend  # only colours the strip uses
    leaky = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.01), nn.Linear(8, 1))
    with torch.no_grad():
        leaky[0].weight.clamp_(-1, 1)
        leaky[0].bias[:2] = -100.0  # 2 units never active (leaky: no dead units, a cyan bar)
    view = result_html(deadrelu.scan(leaky, torch.rand(64, 4) * 2 - 1))
    assert "#17becf" in view and "share of units never active" in view


def test_executed_notebook_shows_the_plot_and_the_report(tmp_path) -> None:
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install deadrelu[test])")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install deadrelu[test])")
    nbconvert = pytest.importorskip("nbconvert.preprocessors",
                                    reason="nbconvert is not installed (pip install deadrelu[test])")
    setup = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
             "import torch, deadrelu\nfrom torch import nn\n"
             "model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))\n"
             # the truth is exact whatever the kernel's random init: |w·x| <= 4, so units with bias -100
             # never fire and units with bias +100 always do (the test was flaky with the init's own biases)
             "with torch.no_grad():\n    model[0].weight.clamp_(-1, 1)\n    model[0].bias[:3] = -100.0\n"
             "    model[0].bias[3:] = 100.0\n"
             "result = deadrelu.scan(model, torch.rand(64, 4) * 2 - 1)\nresult.summary.dead")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup),
                                               nbformat.v4.new_code_cell("result.plot()"),
                                               nbformat.v4.new_code_cell("result.report()")])
    env = {**os.environ, "MPLBACKEND": "Agg"}  # no %matplotlib inline: the figure must display by itself
    old = os.environ.copy()
    os.environ.update(env)
    try:
        nbconvert.ExecutePreprocessor(timeout=180, kernel_name="python3").preprocess(
            notebook, {"metadata": {"path": str(tmp_path)}})
    finally:
        os.environ.clear()
        os.environ.update(old)
    dead, plot, report = (cell["outputs"] for cell in notebook.cells)
    assert dead[0]["data"]["text/plain"] == "3"
    plot_data = [output["data"] for output in plot if output.get("output_type") == "execute_result"]
    assert plot_data and "image/png" in plot_data[0], plot
    report_data = [output["data"] for output in report if output.get("output_type") == "execute_result"]
    assert report_data and '<div class="deadrelu-report">' in report_data[0]["text/html"]
    assert "Sites, worst first" in report_data[0]["text/html"]
