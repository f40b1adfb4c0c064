"""The HTML report: self-contained, every outside string escaped, the numbers of the result, light for
big models, and checked in a real headless browser when one is installed."""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.judge.gate import check_gate
from deadrelu.render import html as html_render
from report_fixtures import synthetic_result
from truth_models import bounded_inputs, linear_with_dead_units

# Torch forbids "." in module names, so the payloads reach document.title without one.
IMG_PAYLOAD = "<img src=x onerror=document['title']='PWNED'>"
ALERT_PAYLOAD = "<img src=x onerror=alert(1)>"
SCRIPT_PAYLOAD = "<script>document['title']='PWNED-SCRIPT'</script>"
ATTR_PAYLOAD = "\"><svg onload=document['title']='PWNED-ATTR'>"
PAYLOADS = (IMG_PAYLOAD, ALERT_PAYLOAD, SCRIPT_PAYLOAD, ATTR_PAYLOAD)


class _Elements(HTMLParser):
    """Collects tags and attributes of a parsed page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        # Only the document's <title>, not the SVG tooltips' <title> elements.
        self._in_title = tag == "title" and "body" not in (t for t, _ in self.tags)

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def parse(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    return parser


def hostile_model() -> nn.Sequential:
    """Linear -> ReLU (named like an XSS payload, 8 of 32 dead) -> Linear -> ReLU -> Linear."""
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(10, 32))
    model.add_module(IMG_PAYLOAD, nn.ReLU())
    model.add_module(SCRIPT_PAYLOAD, nn.Linear(32, 16))
    model.add_module(ALERT_PAYLOAD, nn.ReLU())
    model.add_module(ATTR_PAYLOAD, nn.Linear(16, 1))
    with torch.no_grad():
        model.fc.bias.fill_(0.5)
        model.fc.bias[:8] = -100.0
    return model


@pytest.fixture(scope="module")
def hostile_result():
    torch.manual_seed(0)
    model = hostile_model()
    result = deadrelu.scan(model, bounded_inputs(200, 10), model_info={
        "source": f"/tmp/{SCRIPT_PAYLOAD}.pt", "format": "state_dict", "class": ALERT_PAYLOAD, "sha256": "ab" * 32})
    result = dataclasses.replace(
        result, data={**result.data, "source": f"/data/{IMG_PAYLOAD}.npy"},
        warnings=result.warnings + (f"note about {ATTR_PAYLOAD}",),
        environment={**result.environment, "device": SCRIPT_PAYLOAD})
    return result.with_gate(check_gate(result, max_layer_dead_ratio=0.1))


@pytest.fixture(scope="module")
def hostile_page(hostile_result) -> str:
    return html_render.report(hostile_result)


# -- self-contained and safe ---------------------------------------------------------------------

def test_page_is_self_contained_with_no_script_and_a_strict_csp(hostile_page):
    elements = parse(hostile_page)
    tags = [tag for tag, _ in elements.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    csp = [attrs["content"] for tag, attrs in elements.tags if attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp == [html_render.CSP]
    assert "default-src 'none'" in csp[0] and "script-src" not in csp[0]
    for tag, attrs in elements.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if name in ("src", "href"):
                assert value is not None and (value.startswith("data:image/png;base64,") or value.startswith("#")), value
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", hostile_page)


def test_every_outside_string_is_escaped(hostile_page, hostile_result):
    for payload in PAYLOADS:
        assert payload not in hostile_page
    import html
    for payload in PAYLOADS:
        assert html.escape(payload, quote=True) in hostile_page
    elements = parse(hostile_page)
    # The payload names never turned into elements or attributes.
    assert [attrs.get("src") for tag, attrs in elements.tags if tag == "img" and attrs.get("src") == "x"] == []
    assert not [tag for tag, _ in elements.tags if tag == "svg" and _.get("onload")]
    assert elements.title == f"deadrelu report — /tmp/{SCRIPT_PAYLOAD}.pt"
    assert hostile_result.sites[0].name == IMG_PAYLOAD


def test_suggestion_code_is_escaped_and_complete(hostile_page, hostile_result):
    import html
    bias = [s for s in hostile_result.suggestions if s["id"] == "bias-reset"]
    assert bias and bias[0]["evidence"]["units"] == list(range(8))
    assert html.escape(bias[0]["code"], quote=True) in hostile_page
    assert "layer.bias[[0, 1, 2, 3, 4, 5, 6, 7]] = 0.0" in hostile_page


# -- the numbers -----------------------------------------------------------------------------------

def card(page: str, label: str) -> str:
    match = re.search(rf'<div class="label">{re.escape(label)}</div><div class="value">([^<]*)</div>', page)
    assert match, label
    return match.group(1)


def test_headline_numbers_and_gate(hostile_page, hostile_result):
    s = hostile_result.summary
    assert card(hostile_page, "Units scanned") == f"{s.units:,}" == "48"
    assert card(hostile_page, "Dead") == str(s.dead)
    assert s.dead >= 8
    assert card(hostile_page, "CI gate") == "FAILED"
    assert "dead ratio 25.0% &gt; limit 10.0%" in hostile_page  # percentages, as the terminal, JUnit and Markdown


def test_run_metadata_is_shown(hostile_page):
    for text in ("ab" * 32, "2.13" if torch.__version__.startswith("2.13") else torch.__version__.split("+")[0],
                 "samples", "200", "dead threshold", "granularity", "channel"):
        assert text in hostile_page, text


def test_site_table_is_worst_first_and_details_are_collapsible():
    result = synthetic_result(12, units=32)
    page = html_render.report(result, plots=False)
    table = page.split("<h2>Sites, worst first</h2>")[1].split("<h2>")[0]  # problem sites, then the clean ones
    rows = re.findall(r'<td class="name"><a href="#site-(\d+)">', table)
    # issue 20: worst = the site's level first (units without gradient decide it), then the share of units
    # that never fire, a leaky kind's never-active units included (one order for every view), then stuck share.
    from deadrelu.judge.overall import problem_mask, site_level, stuck_mask

    def key(k):
        site = result.sites[k]
        return (-site_level(site).order, -problem_mask(site).sum() / site.units, -stuck_mask(site).sum() / site.units,
                -site.dormant_ratio, k)
    expected = sorted(range(12), key=key)
    assert [int(r) for r in rows] == expected
    details = re.findall(r'<details class="site" id="site-(\d+)"( open)?>', page)
    assert len(details) == 12
    assert sum(1 for _, opened in details if opened) == html_render.OPEN_DETAILS


def test_unit_map_pixels_mark_the_dead_units(hostile_result):
    from matplotlib.image import imread
    site = hostile_result.sites[0]
    png, columns, rows = html_render.unit_map_png(site)
    image = imread(io.BytesIO(png), format="png")
    assert image.shape == (rows, columns, 3)
    flat = (image.reshape(-1, 3) * 255).round().astype(int)
    red = [k for k in range(site.units) if tuple(flat[k]) == (0xD6, 0x27, 0x28)]
    assert red == site.verdict.dead_units == list(range(8))


def test_histogram_svg_has_one_bar_per_bin_and_dead_first(hostile_result):
    from deadrelu.render.plots import RATE_BINS
    svg = html_render.histogram_svg(hostile_result.sites[0])
    bars = re.findall(r'<rect [^>]*fill="([^"]+)"><title>([^<]+)</title>', svg)
    assert len(bars) == RATE_BINS + 1
    assert bars[0] == ("#d62728", "never active (dead): 8 units")


def test_png_encoder_round_trips():
    from matplotlib.image import imread
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    decoded = imread(io.BytesIO(html_render.png_rgb(pixels)), format="png")
    assert ((decoded * 255).round().astype(np.uint8) == pixels).all()


def test_embedded_images_decode(hostile_page):
    sources = [attrs["src"] for tag, attrs in parse(hostile_page).tags if tag == "img"]
    assert len(sources) == 2 + 2  # two overview plots, one unit map per site
    for source in sources:
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")


def test_a_result_without_suggestions_says_so():
    page = html_render.report(synthetic_result(2, units=8), plots=False)
    assert "No suggestions were computed" in page


# -- big models ------------------------------------------------------------------------------------

def test_500_sites_100k_units_stay_light():
    result = synthetic_result(500, units=200)
    from deadrelu.judge.suggestions import suggest
    result = result.with_suggestions(suggest(result))
    assert result.summary.units == 100_000
    page = html_render.report(result)
    assert len(page.encode()) < 4_000_000
    assert page.count('<details class="site"') == html_render.MAX_DETAIL_SITES
    assert "Detail for 300 healthier site(s) left out" in page
    assert len(re.findall(r"<tr class", page)) == 500
    assert page.count("<img") == 2 + html_render.MAX_DETAIL_SITES


# -- a real browser ---------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=3000", *args],
        capture_output=True, text=True, timeout=120, check=False)


def dumped_title(tmp_path: Path, page: Path) -> tuple[str, _Elements]:
    done = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    elements = parse(done.stdout)
    return elements.title, elements


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: the browser check needs Debian's chromium")
def test_in_a_real_browser_it_renders_and_no_script_runs(tmp_path, hostile_page):
    report = tmp_path / "report.html"
    report.write_text(hostile_page, encoding="utf-8")
    # 1. The detector works: the same payload unescaped, with no CSP, does change the title.
    control = tmp_path / "control.html"
    control.write_text(hostile_page.replace(f'<meta http-equiv="Content-Security-Policy" '
                                            f'content="{__import__("html").escape(html_render.CSP)}">', "")
                       .replace("<main>", f"<main>{IMG_PAYLOAD}", 1), encoding="utf-8")
    title, _ = dumped_title(tmp_path, control)
    assert title == "PWNED", "the control page must trip the detector, or this test proves nothing"
    # 2. The report as written: nothing ran, no payload became an element.
    expected_title = f"deadrelu report — /tmp/{SCRIPT_PAYLOAD}.pt"  # the path as text; a handler would replace it
    title, elements = dumped_title(tmp_path, report)
    assert title == expected_title
    assert [a for t, a in elements.tags if t == "img" and a.get("src") == "x"] == []
    assert "script" not in [t for t, _ in elements.tags]
    # 3. Escaping alone holds: the report without its CSP still runs nothing.
    no_csp = tmp_path / "no_csp.html"
    no_csp.write_text(hostile_page.replace("Content-Security-Policy", "X-Removed"), encoding="utf-8")
    title, _ = dumped_title(tmp_path, no_csp)
    assert title == expected_title
    # 4. It renders: a screenshot of a laptop-sized window, not blank.
    shot = tmp_path / "report.png"
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    from matplotlib.image import imread
    pixels = imread(shot)
    assert pixels.shape[:2] == (2000, 1280)
    assert shot.stat().st_size > 50_000 and float(pixels[..., :3].std()) > 0.05
    # The screenshot stays in tmp_path; DEADRELU_SCREENSHOT_DIR keeps a copy for a human (or a CI artifact).
    kept_dir = os.environ.get("DEADRELU_SCREENSHOT_DIR")
    if kept_dir:
        Path(kept_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(kept_dir) / "browser-report-screenshot.png")


def test_unit_map_pixels_show_elu_floor_units_as_saturated():
    from matplotlib.image import imread
    torch.manual_seed(0)
    result = deadrelu.scan(linear_with_dead_units(dead=4, width=16, activation=nn.ELU()), bounded_inputs(200, 10))
    png, _, _ = html_render.unit_map_png(result.sites[0])
    flat = (imread(io.BytesIO(png), format="png").reshape(-1, 3) * 255).round().astype(int)
    orange = [k for k in range(16) if tuple(flat[k]) == (0xFF, 0x7F, 0x0E)]
    assert orange == result.sites[0].verdict.saturated_units == [0, 1, 2, 3]


# -- issue 10: order, wording, scoped CSS, the notebook view ----------------------------------------

def _rules(css: str) -> list[str]:
    from deadrelu.render.html import _top_level_blocks
    selectors = []
    for selector, body in _top_level_blocks(css):
        if selector.startswith("@"):
            selectors += _rules(body)
        else:
            selectors += [part.strip() for part in selector.split(",")]
    return selectors


def test_css_is_scoped_to_the_report_container(hostile_page):
    css = re.search(r"<style>(.*?)</style>", hostile_page, re.S).group(1)
    selectors = _rules(css)
    assert len(selectors) > 40
    assert all(s == ".deadrelu-report" or s.startswith(".deadrelu-report ") for s in selectors), selectors
    assert '<div class="deadrelu-report"><main>' in hostile_page


def test_page_order_verdict_then_worst_sites_then_suggestions(hostile_page):
    order = [hostile_page.index(marker) for marker in (
        'class="verdictcard', "<h2>Sites, worst first</h2>", "<h2>Suggested fixes", "<h2>Overview</h2>",
        "<h2>Per-site detail</h2>")]
    assert order == sorted(order)


def test_evidence_is_collapsed_with_human_labels(hostile_page):
    assert "<details open><summary>Evidence" not in hostile_page
    assert "<details><summary>Evidence" in hostile_page
    assert ">bias_hold_multiple<" not in hostile_page
    assert "bias counted as holding a unit below zero at −k × typical |w·x|, k =" in hostile_page


def test_each_suggestion_states_units_explained_and_what_its_code_changes(hostile_page):
    assert "explains 8 of 8 dead units there" in hostile_page
    assert "The code sets the bias of 8 unit(s) of" in hostile_page
    assert "general advice: names no cause" in hostile_page
    assert '<span class="destructive">Erases what training learned: </span>' in hostile_page


def test_each_card_is_headed_by_its_action_with_evidence_and_code_below(hostile_page, hostile_result):
    # issue 22: the card heading is what to do (the action line), its evidence (the title) and code under it.
    import html as html_module
    cards = re.findall(r'<article class="sugg[^"]*" id="suggestion-\d+"><h3>(.*?)</h3>(.*?)</article>', hostile_page,
                       re.S)
    assert len(cards) == len(hostile_result.suggestions)
    for (heading, body), suggestion in zip(cards, hostile_result.suggestions):
        shown = re.sub(r"<[^>]+>", "", re.sub(r"<span class=\"sev\">.*?</span>", "", heading))  # <wbr>: no text
        assert html_module.unescape(shown) == suggestion["action_line"]
        assert suggestion["action_line"] != suggestion["title"]
        assert f'<p class="finding"><b>Evidence:</b> {html_render._breakable(suggestion["title"])}</p>' in body
        if suggestion["code"]:
            assert body.index('class="finding"') < body.index("<pre><code>")
    top = hostile_result.suggestions[0]
    assert top["action_line"].startswith("fc: reset 8 negative biases to 0 → explains 8 of 8 dead at ")


def test_site_detail_links_only_site_specific_suggestions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    with torch.no_grad():
        model[0].bias[:8] = -100.0
        model[2].bias[:8] = -100.0
    result = deadrelu.scan(model, bounded_inputs(100, 10))
    page = html_render.report(result, plots=False)
    detail = page.split('id="site-1"')[1].split("</details>")[0]
    linked = re.findall(r'<a href="#suggestion-(\d+)">', detail)
    ids = [result.suggestions[int(k)]["id"] for k in linked]
    assert ids == ["bias-reset"], "dead-share (2 sites) and the guide are model-wide: shown once, above"


def test_notebook_view_has_verdict_worst_sites_suggestions_and_a_plot_in_scoped_css(hostile_result):
    from deadrelu.render.notebook import NB_SCOPE
    view = hostile_result._repr_html_()
    assert view.startswith('<div class="deadrelu-nb"><style>')
    css = re.search(r"<style>(.*?)</style>", view, re.S).group(1)
    assert all(s == NB_SCOPE or s.startswith(NB_SCOPE + " ") for s in _rules(css))
    order = [view.index(marker) for marker in ('class="verdictcard', "<table>", "<svg", "<ol>")]
    assert order == sorted(order)
    assert view.count("<rect ") == len(hostile_result.sites)
    assert view.count("<li ") == min(3, len(hostile_result.suggestions))
    assert "<script" not in view


def test_coverage_counts_sites_not_only_modules() -> None:
    # issue 22: 4 sites (a ReLU module called twice, another once, one F.relu) read
    # "activation modules found 2": the row now counts the sites and says where they come from.
    import re

    import torch
    import torch.nn.functional as F
    from torch import nn

    import deadrelu
    from deadrelu.render.html import report

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.twice, self.once = nn.Linear(4, 4), nn.ReLU(), nn.ReLU()

        def forward(self, x):
            return F.relu(self.once(self.twice(self.twice(self.fc(x)))) - 0.1)

    result = deadrelu.scan(Net(), torch.randn(16, 4))
    assert len(result.sites) == 4
    page = report(result, plots=False)
    row = re.search(r"<td>sites scanned</td><td>([^<]*)</td>", page)
    assert row is not None, "no 'sites scanned' row"
    assert row.group(1) == ("4: 2 activation module(s) found, 1 functional call site(s) (F.relu...); a module called "
                            "k times per forward pass is k sites")
    assert "activation modules found" not in page


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: the browser check needs Debian's chromium")
def test_on_a_390px_phone_the_verdict_name_and_dead_share_show_without_scrolling(tmp_path):
    # issue 22: the sites table hid dead / dead % off-screen. The report is laid out in a 390 px
    # iframe (headless Chromium will not make a window that narrow) and measured from the host.
    import html as html_module
    import json as json_module
    import re

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.feature_extractor_backbone = nn.ModuleDict(
                {f"residual_stage_{k}": nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for k in range(3)})

        def forward(self, x):
            for block in self.feature_extractor_backbone.values():
                x = block(x)
            return x

    model = Net()
    with torch.no_grad():
        for k, block in enumerate(model.feature_extractor_backbone.values()):
            block[0].bias[: 3 + k] = -100.0
    result = deadrelu.scan(model, bounded_inputs(64, 16))
    page = html_render.report(result).replace("Content-Security-Policy", "X-Removed")  # the host's script measures
    probe = """<script>document.getElementById('f').addEventListener('load', () => {
      const d = document.getElementById('f').contentDocument, vw = d.documentElement.clientWidth;
      const right = el => el.getBoundingClientRect().right;
      const rows = [...d.querySelectorAll('table.sites tbody tr')];
      document.title = JSON.stringify({vw, scroll: d.documentElement.scrollWidth,
        verdict: right(d.querySelector('.verdictcard')),
        names: rows.map(r => [r.querySelector('td.name').textContent, right(r.querySelector('td.name'))]),
        dead: rows.map(r => right(r.querySelector('td[data-label="dead %"]')))});});</script>"""
    host = tmp_path / "phone.html"
    host.write_text('<!DOCTYPE html><html><head><title>x</title></head><body style="margin:0">'
                    f'<iframe id="f" style="width:390px;height:900px;border:0" '
                    f'srcdoc="{html_module.escape(page, quote=True)}"></iframe>{probe}</body></html>', encoding="utf-8")
    done = chromium(tmp_path, "--dump-dom", "--window-size=800,1000", host.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json_module.loads(html_module.unescape(re.search(r"<title>(.*?)</title>", done.stdout).group(1)))
    width = measured["vw"]
    assert 360 <= width <= 390, measured
    assert measured["scroll"] <= width, f"the page scrolls sideways: {measured}"
    assert measured["verdict"] <= width
    names = [name for name, _ in measured["names"]]
    assert names == [f"feature_extractor_backbone.residual_stage_{k}.1" for k in (2, 1, 0)]
    assert all(right <= width for _, right in measured["names"]) and all(right <= width for right in measured["dead"])


def test_long_names_break_at_their_separators_not_mid_word():
    # issue 22 (seen at 390 px): 'feature_backbone.residual_stage_3.pointw|ise_act' broke mid-word.
    assert html_render._breakable("stage_3.pointwise_act 0.07979") == "stage_3.<wbr>pointwise_<wbr>act 0.07979"
    assert html_render._breakable("a'b<c>") == "a&#x27;b&lt;c&gt;", "never inside an entity"
    model = nn.Sequential()
    model.add_module("feature_backbone_residual_stage_3", nn.Linear(10, 4))
    model.add_module("pointwise_act", nn.ReLU())
    with torch.no_grad():
        model[0].bias.fill_(-100.0)   # 4 of 4 dead: the bias card's action line names the layer
    page = html_render.report(deadrelu.scan(model, bounded_inputs(50, 10)), plots=False)
    assert "pointwise_<wbr>act" in page and "feature_<wbr>backbone_<wbr>residual_<wbr>stage_3" in page
