"""Issue 15, sections 3-5: crashes are exit 3 with a crash file (never exit 1); every report
``deadrelu report`` loads is validated against the published JSON Schema; configs and
flags are validated (types, ranges, finite); data that cannot fit in memory is exit 2;
units with no finite observation are "unobserved", never healthy."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.cli import app
from truth_models import bounded_inputs, linear_with_dead_units

SCHEMA_FILE = Path(deadrelu.__file__).parent / "schemas" / "result-v1.schema.json"


def one_error_line(done: Any) -> str:
    """The first stderr line after checking the run was exit 2 with exactly one error line and one hint."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.exit_code == 2, done.output
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), lines
    return lines[0]


# -- exit codes ---------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A JSON report of a model with exactly 8 dead of 32 ReLU units, a PReLU site and a failed gate."""
    model = nn.Sequential(linear_with_dead_units(dead=8), nn.PReLU())
    result = deadrelu.scan(model, bounded_inputs(60, 10), batch_size=16)
    result = result.with_gate(deadrelu.check_gate(result, max_dead_ratio=0.1))
    path = tmp_path / "saved.json"
    result.to_json(path)
    return path


def test_a_bug_is_exit_3_with_the_traceback_in_a_crash_file(runner, saved, tmp_path, monkeypatch):
    import tempfile

    import deadrelu.render.console as console

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom in the renderer")
    monkeypatch.setattr(console, "report", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    done = runner.invoke(app, ["report", str(saved)])
    assert done.exit_code == 3, done.output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and "deadrelu bug (RuntimeError: boom in the renderer)" in lines[0], lines
    crash_files = list((tmp_path / "tmp").glob("deadrelu-crash-*.txt"))
    assert len(crash_files) == 1 and str(crash_files[0]) in lines[0]
    text = crash_files[0].read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom in the renderer" in text
    assert not list((tmp_path / "tmp").glob("*.tmp"))  # written atomically
    debugged = runner.invoke(app, ["report", str(saved), "--debug"])
    assert isinstance(debugged.exception, RuntimeError)  # --debug re-raises


# -- the published JSON Schema ------------------------------------------------------------------------


def test_our_own_output_validates_against_the_published_schema(saved):
    import jsonschema
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    document = json.loads(saved.read_text())
    assert document["gate"]["passed"] is False and document["sites"][1]["prelu_slopes"]["count"] == 1
    jsonschema.validate(document, schema)  # the whole document, per-unit arrays included
    lean = deadrelu.ScanResult.from_json(saved).to_dict(unit_stats=False)
    jsonschema.validate(json.loads(json.dumps(lean)), schema)


def test_the_schema_ships_in_the_package_data():
    import tomllib
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "schemas/*.json" in project["tool"]["setuptools"]["package-data"]["deadrelu"]
    assert any(dep.startswith("jsonschema") for dep in project["project"]["dependencies"])


def _tamper(document: dict[str, Any], change: str) -> None:
    site, prelu = document["sites"][0], document["sites"][1]
    if change == "sites as an object":
        document["sites"] = {"0": site}
    elif change == "gate without numbers":
        document["gate"]["violations"] = [{"scope": "model"}]
    elif change == "gate as a string":
        document["gate"] = "passed"
    elif change == "prelu_slopes as a list":
        prelu["prelu_slopes"] = [0.25, 0.25]
    elif change == "prelu_slopes text":
        prelu["prelu_slopes"]["min"] = "low"
    elif change == "coverage not_run as a number":
        document["coverage"]["not_run"] = 5
    elif change == "suggestion evidence as a list":
        document["suggestions"] = [{"id": "x", "severity": "warning", "title": "t", "evidence": [1, 2]}]
    elif change == "suggestion severity unknown":
        document["suggestions"][0]["severity"] = "catastrophic"
    elif change == "negative unit count":
        site["unit_stats"]["active"][3] = -5
    elif change == "on -7 samples":
        document["data"]["samples"] = -7
    elif change == "count above observations":
        site["unit_stats"]["active"][2] = site["unit_stats"]["observations"][2] + 1
    elif change == "short unit array":
        site["unit_stats"]["active"].pop()
    elif change == "unit index beyond units":
        site["dead_units"].append(32)
    elif change == "tau negative":
        document["settings"]["tau"] = -1
    else:  # pragma: no cover
        raise AssertionError(change)


@pytest.mark.parametrize("change, where", [
    ("sites as an object", "sites must be array (got an object)"),
    ("gate without numbers", "gate.violations[0] is missing key 'dead_ratio'"),
    ("gate as a string", "gate must be object or null (got a string)"),
    ("prelu_slopes as a list", "sites[1].prelu_slopes must be object or null (got an array)"),
    ("prelu_slopes text", "sites[1].prelu_slopes.min must be number (got a string)"),
    ("coverage not_run as a number", "coverage.not_run must be array (got an integer)"),
    ("suggestion evidence as a list", "suggestions[0].evidence must be object (got an array)"),
    ("suggestion severity unknown",
     'suggestions[0].severity must be one of "info", "warning", "critical" (got \'catastrophic\')'),
    ("negative unit count", "sites[0].unit_stats.active[3] must be >= 0 (got -5)"),
    ("on -7 samples", "data.samples must be >= 0 (got -7)"),
    ("count above observations", "sites[0].unit_stats.active[2] = 61 is more than that unit's observations (60)"),
    ("short unit array", "sites[0].unit_stats.active has 31 entries, but the site has units = 32"),
    ("unit index beyond units", "sites[0].dead_units holds unit 32, but the site has 32 units"),
    ("tau negative", "settings.tau must be >= 0 (got -1)"),
])
def test_a_tampered_report_is_exit_2_naming_the_file_and_the_field(runner, saved, tmp_path, change, where):
    document = json.loads(saved.read_text())
    _tamper(document, change)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(document))
    line = one_error_line(runner.invoke(app, ["report", str(path), "--html", str(tmp_path / "r.html")]))
    assert line == f"error: {path}: {where}"
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("make, message", [
    (lambda text: text.replace('"sites":', '"deep": ' + "[" * 100_000 + "]" * 100_000 + ', "sites":', 1),
     "is not a deadrelu JSON report: JSON nested 100,002 deep (at most 64)"),
    (lambda text: text.replace('"samples": 60', '"samples": ' + "7" * 5000, 1),
     "is not a deadrelu JSON report: it holds an integer too long to read"),
    (lambda text: text.replace('"samples": 60', '"samples": ' + "7" * 400, 1),
     ": data.samples is an integer of 400 digits, too large for a count"),
    (lambda text: text.replace('"dead_ratio": 0.25', '"dead_ratio": NaN', 1),
     ": sites[0].dead_ratio must be a finite number or null (got nan)"),
    (lambda text: text.replace('"tau": 0.1', '"tau": 1e400', 1),
     ": settings.tau must be a finite number or null (got inf)"),
])
def test_hostile_json_text_is_exit_2(runner, saved, tmp_path, make, message):
    path = tmp_path / "hostile.json"
    path.write_text(make(saved.read_text()))
    line = one_error_line(runner.invoke(app, ["report", str(path)]))
    assert line.startswith(f"error: {path}") and line.endswith(message), line


def test_library_loading_raises_the_error_family_not_value_or_key_errors(saved):
    document = json.loads(saved.read_text())
    del document["sites"][0]["kind"]
    with pytest.raises(deadrelu.ResultFormatError, match=r"^result: sites\[0\] is missing key 'kind'$"):
        deadrelu.ScanResult.from_dict(document)
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(deadrelu.ResultFormatError, match="nested deeper than 64"):
        deadrelu.ScanResult.from_dict({"schema_version": 1, "sites": [], "x": deep})
    # and a valid document round-trips through the same checks
    again = deadrelu.ScanResult.from_dict(json.loads(saved.read_text()))
    assert again.summary.dead == 8


# -- settings: config files, flags, library parameters -----------------------------------------------


@pytest.fixture
def scan_files(tmp_path: Path) -> dict[str, Path]:
    """A state_dict with exactly 8 dead of 32 units, its architecture file and 50 bounded samples."""
    torch.save(linear_with_dead_units(dead=8).state_dict(), tmp_path / "model.pt")
    (tmp_path / "arch.py").write_text("from torch import nn\n\ndef build():\n"
                                      "    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))\n")
    np.save(tmp_path / "data.npy", bounded_inputs(50, 10).numpy())
    return {"model": tmp_path / "model.pt", "arch": tmp_path / "arch.py", "data": tmp_path / "data.npy",
            "dir": tmp_path}


def scan_cli(runner: Any, files: dict[str, Path], *args: Any) -> Any:
    return runner.invoke(app, ["scan", str(files["model"]), str(files["data"]), "--arch", f"{files['arch']}:build",
                               "-q", *map(str, args)])


@pytest.mark.parametrize("toml, message", [
    ("[scan]\nbatch_size = 3.5", "[scan] batch_size must be a positive integer, got 3.5"),
    ("[scan]\nbatch_size = true", "[scan] batch_size must be a positive integer, got True"),
    ("[scan]\nbatch_size = 0", "[scan] batch_size must be >= 1, got 0"),
    ("[scan]\nlimit = \"all\"", "[scan] limit must be a positive integer, got 'all'"),
    ("[scan]\ngranularity = \"neuron\"", "[scan] granularity must be one of channel, position, got 'neuron'"),
    ("[scan]\ndevice = \"gpu\"", "[scan] device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("[scan]\nlayers = 3", "[scan] layers must be a glob or a list of globs, got 3"),
    ("[scan]\nfunctional = \"yes\"", "[scan] functional must be always, auto or off (true reads always, false off), got 'yes'"),
    ("[thresholds]\ntau = nan", "[thresholds] tau must be a finite number, got nan"),
    ("[thresholds]\ntau = \"0.1\"", "[thresholds] tau must be a number, got '0.1'"),
    ("[thresholds]\nsaturation = inf", "[thresholds] saturation must be a finite number, got inf"),
    ("[thresholds]\ndead_threshold = 1.5", "[thresholds] dead_threshold must be between 0 and 1, got 1.5"),
    ("[gate]\nmax_dead_ratio = \"x\"", "[gate] max_dead_ratio must be a number, got 'x'"),
    ("[gate]\nmax_layer_dead_ratio = nan", "[gate] max_layer_dead_ratio must be a finite number, got nan"),
])
def test_a_bad_config_value_is_exit_2_naming_the_file_and_the_key(runner, scan_files, toml, message):
    config = scan_files["dir"] / "bad.toml"
    config.write_text(toml + "\n")
    line = one_error_line(scan_cli(runner, scan_files, "--config", config))
    assert line == f"error: {config}: {message}"


@pytest.mark.parametrize("flags, message", [
    (("--tau", "nan"), "--tau must be a finite number, got nan"),
    (("--tau", "inf"), "--tau must be a finite number, got inf"),
    (("--saturation", "nan"), "--saturation must be a finite number, got nan"),
    (("--max-dead-ratio", "nan"), "--max-dead-ratio must be a finite number, got nan"),
    (("--max-layer-dead-ratio", "-inf"), "--max-layer-dead-ratio must be a finite number, got -inf"),
    (("--batch-size", "0"), "--batch-size must be >= 1, got 0"),
    (("--device", "gpu"), "--device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    (("--device", "cuda:7"), "--device cuda:7 asked for, but "),
])
def test_a_bad_flag_is_exit_2_naming_the_flag_with_a_hint(runner, scan_files, flags, message):
    line = one_error_line(scan_cli(runner, scan_files, *flags))
    assert line.startswith(f"error: {message}"), line


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 3.5}, "batch_size must be a positive integer, got 3.5"),
    ({"tau": float("nan")}, "tau must be a finite number, got nan"),
    ({"dead_threshold": True}, "dead_threshold must be a number, got True"),
    ({"granularity": "neuron"}, "granularity must be one of channel, position, got 'neuron'"),
    ({"device": "gpu"}, "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
])
def test_library_settings_name_the_parameter_and_give_a_hint(overrides, message):
    with pytest.raises(deadrelu.ConfigError) as caught:
        deadrelu.scan(linear_with_dead_units(), bounded_inputs(8, 10), **overrides)
    assert caught.value.message == message and caught.value.hint
    with pytest.raises(deadrelu.ConfigError, match="finite"):
        deadrelu.Thresholds(tau=float("inf"))
    with pytest.raises(deadrelu.ConfigError, match="finite"):
        deadrelu.check_gate(deadrelu.scan(linear_with_dead_units(), bounded_inputs(8, 10)), max_dead_ratio=math.nan)


# -- data that cannot fit in memory --------------------------------------------------------------------


def test_an_npz_array_larger_than_memory_is_exit_2_with_its_declared_size(runner, scan_files):
    """A 4 PiB float32 array declared by a hand-built .npz member's header (the member holds 64 bytes)."""
    import io
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (2 ** 30, 2 ** 20)})
    path = scan_files["dir"] / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(64))
    done = runner.invoke(app, ["scan", str(scan_files["model"]), str(path), "--arch", f"{scan_files['arch']}:build"])
    line = one_error_line(done)
    assert line == (f"error: {path}: array 'x' declares shape (1073741824, 1048576) float32 = "
                    f"4,503,599,627,370,496 bytes (4.0 PiB), more than fits in memory")
    assert ".npy, which is streamed from disk" in done.stderr


# -- unobserved units -----------------------------------------------------------------------------------


@pytest.fixture
def relu_only(tmp_path: Path) -> dict[str, Path]:
    """A bare ReLU over 8 features (unit i sees feature i), data with features 0-2 NaN in every sample,
    and data that is NaN everywhere."""
    (tmp_path / "relu.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.ReLU())\n")
    x = bounded_inputs(40, 8).numpy()
    x[:, :3] = np.nan
    np.save(tmp_path / "partly_nan.npy", x)
    np.save(tmp_path / "all_nan.npy", np.full((40, 8), np.nan, dtype=np.float32))
    return {"model": tmp_path / "relu.py", "partly": tmp_path / "partly_nan.npy", "all": tmp_path / "all_nan.npy",
            "dir": tmp_path}


def test_a_scan_that_observed_nothing_is_exit_2(runner, relu_only):
    done = runner.invoke(app, ["scan", "--model", f"{relu_only['model']}:build", str(relu_only["all"]),
                               "--nonfinite", "keep"])
    line = one_error_line(done)
    assert line == (f"error: {relu_only['all']}: nothing was observed: all 8 units at 1 site(s) saw only NaN/inf "
                    f"(40 of 40 samples held NaN/inf)")


def test_units_without_a_finite_observation_are_unobserved_not_healthy(runner, relu_only):
    path = relu_only["dir"] / "partly.json"
    done = runner.invoke(app, ["scan", "--model", f"{relu_only['model']}:build", str(relu_only["partly"]),
                               "--nonfinite", "keep", "--json", str(path), "-q"])
    assert done.exit_code == 0, done.output
    assert "WARN  no dead units among the 5 observed" in done.stdout  # issue 10: verdict line leads with the level
    assert "3 units unobserved (no finite observation)" in done.stdout
    document = json.loads(path.read_text())
    assert document["summary"]["unobserved"] == 3 and document["summary"]["units"] == 8
    assert document["summary"]["dead"] == 0 and document["summary"]["dormant"] == 0
    site = document["sites"][0]
    assert site["unobserved"] == 3 and site["unit_stats"]["observations"][:4] == [0, 0, 0, 40]
    import jsonschema
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text()))
    reread = deadrelu.ScanResult.from_json(path)
    assert reread.summary.unobserved == 3 and reread.to_frame().loc[0, "unobserved"] == 3
    rendered = runner.invoke(app, ["report", str(path), "-q", "--html", str(relu_only["dir"] / "r.html")])
    assert "3 units unobserved (no finite observation)" in rendered.stdout
    assert "Unobserved" in (relu_only["dir"] / "r.html").read_text()


def test_a_model_whose_activations_are_all_nan_observed_nothing():
    # Finite weights and data, NaN activations (0 * inf): nothing observed, the weights to check.
    class Broken(nn.Module):
        def forward(self, x):
            return x * float("inf") * 0.0

    model = nn.Sequential(nn.Linear(10, 4), Broken(), nn.ReLU())
    with pytest.raises(deadrelu.DataLoadError, match="nothing was observed: all 4 units") as caught:
        deadrelu.scan(model, bounded_inputs(20, 10))
    assert "weights" in caught.value.hint


def test_nan_weights_are_blamed_on_the_weights_not_the_data():
    # issue 22: NaN weights made every activation NaN and the error blamed the data file.
    model = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].bias.fill_(float("nan"))
        model[2].weight[0, 0] = float("inf")
    with pytest.raises(deadrelu.ModelLoadError) as caught:
        deadrelu.scan(model, bounded_inputs(20, 10))
    assert str(caught.value).startswith("the model's weights are not finite: 0.bias, 2.weight hold NaN/inf")
    assert "data is finite" in str(caught.value)


def test_no_mutation_of_a_report_crashes_the_report_command(runner, saved, tmp_path):
    """Seeded mutations (a value swapped for another JSON type, a negative, a huge number, a key
    removed) of a valid report: each ends in exit 0 (still valid) or exit 2, never 1 or 3."""
    import random
    base = json.loads(saved.read_text())

    def paths(node: Any, path: tuple = ()) -> Any:
        if path:
            yield path
        children = node.items() if isinstance(node, dict) else enumerate(node[:2]) if isinstance(node, list) else ()
        for key, child in children:
            yield from paths(child, (*path, key))
    every = list(paths(base))
    values = [-1, "x", None, [], {}, 1e308, True, 2 ** 60, 0.5, -0.5, [1, "a"], {"a": {"b": 1}}, 0, ""]
    rng = random.Random(15)
    codes = []
    for _ in range(16):
        document = json.loads(json.dumps(base))
        path = rng.choice(every)
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        if rng.random() < 0.2 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = rng.choice(values)
        (tmp_path / "m.json").write_text(json.dumps(document))
        done = runner.invoke(app, ["report", str(tmp_path / "m.json"), "--html", str(tmp_path / "m.html"), "-q"])
        assert done.exit_code in (0, 2), (path, done.output)
        codes.append(done.exit_code)
    assert codes.count(2) >= 8  # most mutations are caught, not waved through
