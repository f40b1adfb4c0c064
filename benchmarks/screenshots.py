"""Regenerate the report screenshots: the terminal at 80 and 120 columns (through tmux; the default
view and ``--verbose``), the HTML report in Chromium at desktop (1280 px) and phone (390 px) widths,
and the notebook view, for the bundled samples, a ResNet-50-like network with channels killed
through BatchNorm β, and a network whose site names are 47 characters long.

    python benchmarks/screenshots.py [--out benchmarks/screenshots] [--only resnet50]

Needs tmux and Chromium (``chromium --headless``) on PATH; writes PNGs under ``--out`` (committed:
look at them after a change to any output) beside the HTML/text they were made from (ignored).
Deterministic models, CPU only, a few minutes.
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
TESTS = REPO / "tests"

#: name -> the ``deadrelu scan`` arguments
CASES: dict[str, list[str]] = {
    "mlp_high_lr": [str(SAMPLES / "mlp_high_lr.pt"), str(SAMPLES / "mlp_data.npy"),
                    "--arch", f"{SAMPLES / 'archs.py'}:HighLrMLP"],
    "cnn_bn": [str(SAMPLES / "cnn_bn.pt"), str(SAMPLES / "cnn_data.npy"), "--arch", f"{SAMPLES / 'archs.py'}:SmallCNN"],
    "elu_selu": [str(SAMPLES / "elu_selu_saturated.pt"), str(SAMPLES / "elu_selu_data.npy"),
                 "--arch", f"{SAMPLES / 'archs.py'}:SaturatedELUNet"],
    "leaky_prelu": [str(SAMPLES / "leaky_prelu.pt"), str(SAMPLES / "leaky_prelu_data.npy"),
                    "--arch", f"{SAMPLES / 'archs.py'}:LeakyPReLUNet"],
    "resnet50": ["--model", f"{TESTS / 'real_nets.py'}:broken_resnet", "--data", f"{TESTS / 'real_nets.py'}:resnet_data"],
    "long_names": ["--model", f"{Path(__file__).resolve().parent / 'screenshot_models.py'}:long_names",
                   "--data", f"{Path(__file__).resolve().parent / 'screenshot_models.py'}:long_names_data"],
}
#: terminal widths shot, in columns
COLUMNS = (80, 120)
#: a host page around the notebook view, styled like JupyterLab's output area (and hostile to leaks)
NOTEBOOK_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>
body{{font-family:Georgia,serif;color:#7b1fa2;margin:16px}} table{{border:3px solid #7b1fa2}}
.cell{{border-left:3px solid #1976d2;padding:4px 12px;margin:8px 0}}</style></head><body>
<div class="cell"><pre>[3]: result</pre>{view}</div>
<p>Host page text after the cell (serif, purple): the view's CSS must not change it.</p>
<table><tr><td>a host table</td></tr></table></body></html>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        sys.exit("screenshots: no chromium on PATH")
    return found


def screenshot(page: Path, png: Path, width: int, height: int) -> None:
    """A headless Chromium screenshot of a local page (no network, no scripts needed)."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", "--virtual-time-budget=2000", f"--screenshot={png}",
                        f"--window-size={width},{height}", page.as_uri()],
                       check=True, capture_output=True, timeout=180)
    _shrink(png)


def _shrink(png: Path, colors: int = 96) -> None:
    """The PNG with an adaptive palette: a third of the size, text as sharp (the images are committed)."""
    try:
        from PIL import Image
    except ImportError:  # matplotlib brings Pillow; without it the PNG stays as Chromium wrote it
        return
    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    small.save(png, optimize=True)


def terminal(name: str, args: list[str], out: Path, columns: int = 80, rows: int = 60) -> Path:
    """Run ``deadrelu scan`` in a tmux pane of ``columns`` x ``rows`` and keep what the pane shows
    (``name`` says which shot: ``mlp_high_lr_80`` / ``mlp_high_lr_120_verbose``)."""
    if not shutil.which("tmux"):
        sys.exit("screenshots: no tmux on PATH")
    session = f"deadrelu-shot-{os.getpid()}-{name}"
    command = " ".join([sys.executable, "-m", "deadrelu.cli", "scan", *map(_quote, args)])
    env = f"PYTHONPATH={_quote(str(REPO))} TERM=xterm-256color COLUMNS={columns}"
    script = f"cd {_quote(str(REPO))}; clear; env {env} {command}; tmux wait-for -S {session}; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(columns), "-y", str(rows),
                    "bash", "-c", script], check=True)
    subprocess.run(["tmux", "set-option", "-t", session, "history-limit", "5000"], check=False, capture_output=True)
    try:
        subprocess.run(["tmux", "wait-for", session], check=True, timeout=300)
        time.sleep(0.2)
        # -S -: the whole scrollback, so a --verbose report longer than the pane is there too
        shown = subprocess.run(["tmux", "capture-pane", "-p", "-e", "-S", "-", "-t", session], check=True,
                               capture_output=True, text=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)
    text_path = out / f"{name}_terminal.txt"
    text_path.write_text(shown, encoding="utf-8")
    return _terminal_png(name, shown, out, columns)


def _quote(text: str) -> str:
    import shlex
    return shlex.quote(text)


def _terminal_png(name: str, ansi: str, out: Path, columns: int) -> Path:
    """The captured pane (with its colours) drawn as a terminal window, via rich's HTML export."""
    from rich.console import Console
    from rich.text import Text
    console = Console(record=True, width=columns, force_terminal=True, color_system="truecolor", file=open(os.devnull, "w"))
    console.print(Text.from_ansi(ansi.rstrip("\n")), soft_wrap=True)
    page = out / f"{name}_terminal.html"
    from rich.terminal_theme import MONOKAI
    body = console.export_html(theme=MONOKAI, inline_styles=True, code_format=(
        "<!DOCTYPE html><html><head><meta charset=utf-8><style>body{{margin:0;background:#1e1e1e}}"
        "pre{{margin:0;padding:10px;color:#e0e0e0;background:#1e1e1e;font:14px/1.25 'DejaVu Sans Mono',"
        "monospace;width:{width}ch}}</style></head><body><pre>{code}</pre></body></html>").replace("{width}",
                                                                                             str(columns)))
    page.write_text(body, encoding="utf-8")
    lines = ansi.rstrip("\n").count("\n") + 1
    png = out / f"{name}_terminal.png"
    screenshot(page, png, width=int(columns * 8.45) + 24, height=lines * 18 + 24)
    return png


def reports(name: str, args: list[str], out: Path) -> list[Path]:
    """HTML report (desktop 1280 px, phone 390 px) and the notebook view, from one scan."""
    from deadrelu.render import html as html_render
    from deadrelu.result import ScanResult
    json_path = out / f"{name}.json"
    subprocess.run([sys.executable, "-m", "deadrelu.cli", "scan", *args, "--json", str(json_path), "-q"],
                   check=False, capture_output=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    result = ScanResult.from_json(json_path)
    page = out / f"{name}_report.html"
    page.write_text(html_render.report(result), encoding="utf-8")
    shots = []
    png = out / f"{name}_html_desktop.png"
    screenshot(page, png, 1280, 2600)
    shots.append(png)
    # Headless Chromium will not make a window narrower than about 500 px, so the phone is a
    # 390 px iframe (the report's own viewport and media queries) on a grey page.
    phone = out / f"{name}_phone.html"
    phone.write_text('<!DOCTYPE html><html><body style="margin:0;background:#888">'
                     '<iframe style="width:390px;height:2400px;border:0;background:#fff" '
                     f'srcdoc="{html.escape(page.read_text(encoding="utf-8"), quote=True)}"></iframe></body></html>',
                     encoding="utf-8")
    png = out / f"{name}_html_phone.png"
    screenshot(phone, png, 500, 2400)
    shots.append(png)
    notebook = out / f"{name}_notebook.html"
    notebook.write_text(NOTEBOOK_PAGE.format(view=result._repr_html_()), encoding="utf-8")
    png = out / f"{name}_notebook.png"
    screenshot(notebook, png, 960, 720)
    shots.append(png)
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "screenshots")
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(REPO), str(TESTS)]
    for name in options.only or CASES:
        args = CASES[name]
        written = [terminal(f"{name}_{columns}{'_verbose' if verbose else ''}", args + ["--verbose"] * verbose,
                            options.out, columns)
                   for columns in COLUMNS for verbose in (False, True)]
        written += reports(name, args, options.out)
        print(f"{name}: " + ", ".join(html.escape(path.name) for path in written))


if __name__ == "__main__":
    main()
