"""Every data source a user arrives with, through the CLI and the API, with exact counts.

The model is ``linear_with_dead_units``: 8 of 32 units dead on inputs in [-1, 1], so
every source that feeds the same samples must report exactly 8 dead.
"""

from __future__ import annotations

import json
import mmap
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import deadrelu
from conftest import error_line, report_of, run
from deadrelu.load.data import DataStream, ModelInputs, _PageDropper, fit_batches, load_data
from truth_models import bounded_inputs, linear_with_dead_units

MODEL = "truth_models:linear_with_dead_units"


class TwoInputs(nn.Module):
    """forward(a, b): a (N, 10) through the 8-dead Linear, b (N, 4) through its own Linear
    with bias -100 on 2 of 6 units."""

    def __init__(self) -> None:
        super().__init__()
        self.a_path = linear_with_dead_units(dead=8)[:2]
        self.b_fc = nn.Linear(4, 6)
        self.b_act = nn.ReLU()
        with torch.no_grad():
            self.b_fc.bias.fill_(0.5)
            self.b_fc.bias[[1, 4]] = -100.0

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a_path(a).sum(1) + self.b_act(self.b_fc(b)).sum(1)


def two_inputs() -> TwoInputs:
    return TwoInputs()


# Importable by the CLI's --model, like any user package.
sys.modules.setdefault("deadrelu_test_two_inputs", sys.modules[__name__])


def dead_by_site(report: dict) -> dict[str, int]:
    return {site["name"]: site["dead"] for site in report["sites"]}


@pytest.fixture
def x() -> np.ndarray:
    return bounded_inputs(120, 10).numpy()


@pytest.fixture
def fixed(tmp_path: Path) -> tuple[nn.Module, list[str]]:
    """One set of weights, and the CLI arguments that build exactly that model."""
    model = linear_with_dead_units()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    return model, ["--model", MODEL, "--weights", str(tmp_path / "weights.pt")]


# -- files ----------------------------------------------------------------------------------


def test_npy_is_memory_mapped_and_scanned(runner, tmp_path, x):
    np.save(tmp_path / "x.npy", x)
    report = report_of(runner, "--model", MODEL, tmp_path / "x.npy", "--batch-size", "16")
    assert (report["summary"]["dead"], report["data"]["samples"], report["data"]["batches"]) == (8, 120, 8)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_npy_pages_are_given_back_after_each_batch(tmp_path):
    """Resident pages of the mapped file stay near one batch however far the scan got."""
    rows, width = 4096, 1024  # 16 MiB of float32, 4 KiB per row
    array = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(rows, width))
    array[:] = 1.0
    array.flush()
    del array
    stream = load_data(tmp_path / "big.npy", batch_size=256)

    def mapped_rss_kib() -> int:
        smaps = Path("/proc/self/smaps").read_text().split("\n")
        total, inside = 0, False
        for line in smaps:
            if line and not line[0].isupper() or "-" in line.split(" ")[0]:
                inside = line.rstrip().endswith("big.npy")
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
        return total

    batch_kib = 256 * width * 4 // 1024
    peaks = []
    for batch in stream.batches():
        assert batch.shape == (256, width)
        peaks.append(mapped_rss_kib())
    assert len(peaks) == rows // 256
    # Without madvise the mapping would hold up to the whole 16 MiB by the end.
    assert max(peaks) <= batch_kib + 2 * mmap.PAGESIZE // 1024


def test_page_dropper_rounds_to_whole_pages(tmp_path):
    np.save(tmp_path / "odd.npy", np.ones((100, 3), dtype=np.float32))  # 12-byte rows, unaligned header
    array = np.load(tmp_path / "odd.npy", mmap_mode="r")
    dropper = _PageDropper(array, tmp_path / "odd.npy")
    assert dropper.enabled
    dropper.release(0, 100)
    dropper.release(40, 60)
    dropper.close()
    assert float(np.asarray(array).sum()) == 300.0  # dropped pages read back from the file


def test_npz_key_only_array_and_two_inputs(runner, tmp_path, x):
    np.savez(tmp_path / "one.npz", inputs=x)
    assert report_of(runner, "--model", MODEL, tmp_path / "one.npz")["summary"]["dead"] == 8
    b = np.random.default_rng(0).uniform(-1, 1, size=(120, 4)).astype(np.float32)
    np.savez(tmp_path / "two.npz", a=x, b=b, labels=np.zeros(120))
    assert report_of(runner, "--model", MODEL, tmp_path / "two.npz", "--key", "a")["summary"]["dead"] == 8
    report = report_of(runner, "--model", "deadrelu_test_two_inputs:two_inputs", tmp_path / "two.npz",
                       "--key", "a", "--key", "b")
    assert dead_by_site(report) == {"a_path.1": 8, "b_act": 2}
    assert any("model fed 2 inputs per batch" in w for w in report["warnings"])
    ambiguous = run(runner, "--model", MODEL, tmp_path / "two.npz")
    assert ambiguous.exit_code == 2 and "holds 3 arrays (a, b, labels)" in ambiguous.stderr


def test_pt_tensor_dict_and_two_inputs(runner, tmp_path, x):
    torch.save(torch.from_numpy(x), tmp_path / "x.pt")
    assert report_of(runner, "--model", MODEL, tmp_path / "x.pt")["summary"]["dead"] == 8
    b = torch.rand(120, 4) * 2 - 1
    torch.save({"a": torch.from_numpy(x), "b": b, "y": torch.zeros(120)}, tmp_path / "d.pt")
    assert report_of(runner, "--model", MODEL, tmp_path / "d.pt", "--key", "a")["summary"]["dead"] == 8
    report = report_of(runner, "--model", "deadrelu_test_two_inputs:two_inputs", tmp_path / "d.pt",
                       "--key", "a,b")
    assert dead_by_site(report) == {"a_path.1": 8, "b_act": 2}


def test_csv_numeric_columns_and_columns_option(runner, tmp_path, x):
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)])
    frame.insert(3, "city", ["Oslo"] * 120)
    frame["label"] = np.arange(120) % 2
    frame.to_csv(tmp_path / "t.csv", index=False)
    # Every numeric column: 10 features + label = 11, which the model rejects.
    rejected = run(runner, "--model", MODEL, tmp_path / "t.csv")
    assert rejected.exit_code == 2 and "(120, 11)" in rejected.stderr and "in_features=10" in rejected.stderr
    report = report_of(runner, "--model", MODEL, tmp_path / "t.csv", "--columns", ",".join(f"f{i}" for i in range(10)))
    assert report["summary"]["dead"] == 8 and report["data"]["samples"] == 120
    frame.drop(columns=["label"]).to_csv(tmp_path / "features.csv", index=False)
    report = report_of(runner, "--model", MODEL, tmp_path / "features.csv")
    assert report["summary"]["dead"] == 8
    assert "left out 1 non-numeric column(s): city" in report["warnings"]


def test_columns_order_is_the_feature_order(runner, tmp_path, x, fixed):
    model, build = fixed
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)])
    frame[list(reversed(frame.columns))].to_csv(tmp_path / "reversed.csv", index=False)
    args = [arg for i in range(10) for arg in ("--columns", f"f{i}")]
    report = report_of(runner, *build, tmp_path / "reversed.csv", *args)
    expected = deadrelu.scan(model, torch.from_numpy(x))
    assert report["sites"][0]["unit_stats"]["active"] == expected.sites[0].stats.active.tolist()


def test_parquet(runner, tmp_path, x):
    pd.DataFrame(x, columns=[f"f{i}" for i in range(10)]).to_parquet(tmp_path / "t.parquet")
    assert report_of(runner, "--model", MODEL, tmp_path / "t.parquet")["summary"]["dead"] == 8


# -- python sources -------------------------------------------------------------------------

SOURCES = """
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

def _x():
    g = torch.Generator().manual_seed(0)
    return torch.rand(120, 10, generator=g) * 2 - 1

def tensor():
    return _x()

def array():
    return _x().numpy()

class Pairs(Dataset):
    def __len__(self):
        return 120
    def __getitem__(self, index):
        return _x()[index], index % 3

def dataset():
    return Pairs()

def loader():
    return DataLoader(TensorDataset(_x(), torch.zeros(120)), batch_size=7)

def dict_loader():
    return [{"pixels": chunk, "label": torch.zeros(len(chunk))} for chunk in _x().split(50)]

def two_input_dicts():
    b = torch.rand(120, 4) * 2 - 1
    return [{"a": a, "b": bb, "y": torch.zeros(len(a))} for a, bb in zip(_x().split(40), b.split(40))]

def two_input_tuples():
    b = torch.rand(120, 4) * 2 - 1
    return [(a, bb, torch.zeros(len(a))) for a, bb in zip(_x().split(40), b.split(40))]

def arrays():
    return {"a": _x(), "b": torch.rand(120, 4) * 2 - 1}

def broken():
    raise FileNotFoundError("shards/ not mounted")
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "sources.py"
    path.write_text(SOURCES)
    return path


@pytest.mark.parametrize("make", ["tensor", "array", "dataset", "loader"])
def test_python_source_kinds(runner, source, make):
    report = report_of(runner, "--model", MODEL, "--data", f"{source}:{make}", "--batch-size", "32")
    assert (report["summary"]["dead"], report["data"]["samples"]) == (8, 120)
    expected_batches = {"tensor": 4, "array": 4, "dataset": 4, "loader": 18}[make]
    assert report["data"]["batches"] == expected_batches


def test_python_source_dict_batches_need_input_key(runner, source):
    # "label" is a target, never fed: the one other entry is the input.
    assert report_of(runner, "--model", MODEL, "--data", f"{source}:dict_loader")["summary"]["dead"] == 8
    unclear = run(runner, "--model", MODEL, "--data", f"{source}:two_input_dicts")
    assert unclear.exit_code == 2 and "--input-key" in unclear.stderr
    report = report_of(runner, "--model", MODEL, "--data", f"{source}:dict_loader", "--input-key", "pixels")
    assert report["summary"]["dead"] == 8


@pytest.mark.parametrize("make,keys", [("two_input_dicts", ["a", "b"]), ("two_input_tuples", ["0", "1"])])
def test_python_source_several_inputs(runner, source, make, keys):
    args = [arg for key in keys for arg in ("--input-key", key)]
    report = report_of(runner, "--model", "deadrelu_test_two_inputs:two_inputs", "--data", f"{source}:{make}", *args)
    assert dead_by_site(report) == {"a_path.1": 8, "b_act": 2}
    assert report["data"]["samples"] == 120


def test_python_source_dict_of_arrays_with_keys(runner, source):
    report = report_of(runner, "--model", "deadrelu_test_two_inputs:two_inputs", "--data", f"{source}:arrays",
                       "--key", "a", "--key", "b")
    assert dead_by_site(report) == {"a_path.1": 8, "b_act": 2}


def test_python_source_from_a_package(runner, tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "data.py").write_text(SOURCES)
    monkeypatch.syspath_prepend(str(tmp_path))
    report = report_of(runner, "--model", MODEL, "--data", "userpkg.data:dataset", "--limit", "50")
    assert (report["summary"]["dead"], report["data"]["samples"]) == (8, 50)


def test_python_source_errors_are_one_line(runner, source):
    failing = run(runner, "--model", MODEL, "--data", f"{source}:broken")
    error_line(failing, "calling it failed: FileNotFoundError: shards/ not mounted")
    missing = run(runner, "--model", MODEL, "--data", f"{source}:nope")
    assert missing.exit_code == 2 and "has no attribute 'nope'" in missing.stderr


def test_api_input_fn_with_keyword_inputs():
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = linear_with_dead_units(dead=8)

        def forward(self, *, features: torch.Tensor, scale: float) -> torch.Tensor:
            return self.body(features * scale)

    batches = [{"x": chunk} for chunk in bounded_inputs(60, 10).split(25)]
    result = deadrelu.scan(Keyword(), batches, input_fn=lambda batch: {"features": batch["x"], "scale": 1.0})
    assert result.summary.dead == 8 and result.data["samples"] == 60


def test_api_dict_of_arrays_with_input_keys():
    data = {"a": bounded_inputs(30, 10), "b": torch.rand(30, 4) * 2 - 1, "y": torch.zeros(30)}
    result = deadrelu.scan(TwoInputs(), data, input_key=["a", "b"], batch_size=8)
    assert {s.name: s.dead for s in result.sites} == {"a_path.1": 8, "b_act": 2}
    assert (result.data["samples"], result.data["batches"]) == (30, 4)
    with pytest.raises(deadrelu.DataLoadError, match=r"holds 3 arrays \(a, b, y\); say which"):
        deadrelu.scan(TwoInputs(), data)


def test_api_model_inputs_batches():
    model = TwoInputs()
    a, b = bounded_inputs(30, 10), torch.rand(30, 4) * 2 - 1
    result = deadrelu.scan(model, [ModelInputs((a[:20], b[:20])), ModelInputs((a[20:], b[20:]))])
    assert {s.name: s.dead for s in result.sites} == {"a_path.1": 8, "b_act": 2}


# -- subsets, casts, non-finite values ---------------------------------------------------------


def test_limit_and_shuffle_seed_pick_a_reproducible_random_subset(runner, tmp_path, fixed):
    model, build = fixed
    data = np.arange(200, dtype=np.float32)[:, None].repeat(10, 1) / 200 - 0.5  # row i is (i/200 - 0.5)
    np.save(tmp_path / "rows.npy", data)
    first = report_of(runner, *build, tmp_path / "rows.npy", "--limit", "30")
    assert "scanned the first 30 of 200 samples (--limit)" in first["warnings"]
    one = report_of(runner, *build, tmp_path / "rows.npy", "--limit", "30", "--shuffle-seed", "7")
    again = report_of(runner, *build, tmp_path / "rows.npy", "--limit", "30", "--shuffle-seed", "7")
    assert "scanned a random subset of 30 of 200 samples (--shuffle-seed 7)" in one["warnings"]
    assert one["sites"][0]["unit_stats"] == again["sites"][0]["unit_stats"]
    chosen = np.sort(np.random.default_rng(7).choice(200, size=30, replace=False))
    expected = deadrelu.scan(model, torch.from_numpy(data[chosen]))
    assert one["sites"][0]["unit_stats"]["total"] == pytest.approx(expected.sites[0].stats.total.tolist())
    assert one["data"]["samples"] == 30


def test_integer_data_is_cast_and_scaled_with_a_note(runner, tmp_path, fixed):
    model, build = fixed
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 10), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", pixels)
    report = report_of(runner, *build, tmp_path / "u8.npy", "--scale", str(1 / 255))
    assert f"data were uint8 integers; cast to float32, scaled by {1 / 255:g}" in report["warnings"]
    expected = deadrelu.scan(model, torch.from_numpy(pixels).float() * (1 / 255))
    assert report["sites"][0]["unit_stats"]["active"] == expected.sites[0].stats.active.tolist()
    assert report["summary"]["dead"] == 8


@pytest.mark.parametrize("policy,samples,skipped,exit_code", [("fail", None, None, 2), ("skip", 37, 3, 0),
                                                              ("keep", 40, 0, 0)])
def test_nonfinite_policies(runner, tmp_path, policy, samples, skipped, exit_code):
    data = bounded_inputs(40, 10).numpy()
    data[[4, 17, 30], [0, 5, 9]] = [np.nan, np.inf, -np.inf]
    np.save(tmp_path / "nan.npy", data)
    # Batches of 8: the bad samples spoil batches 0, 2 and 3; batches 1 and 4 are observed by every unit
    # (with one batch of 40, keep would observe nothing, which is exit 2: test_hardening).
    result = run(runner, "--model", MODEL, tmp_path / "nan.npy", "--nonfinite", policy, "--json", "-",
                 "--batch-size", "8")
    assert result.exit_code == exit_code, result.output
    if policy == "fail":
        error_line(result, "sample 4 is the first (1 in its batch)")
        return
    report = json.loads(result.stdout)
    assert (report["data"]["samples"], report["data"]["skipped"], report["data"]["nonfinite"]) == (
        samples, skipped, 3)
    if policy == "keep":
        # The three bad samples make NaN/inf activations, counted per site and left out of the stats.
        assert report["sites"][0]["nonfinite"] > 0 and report["summary"]["unobserved"] == 0
        assert any("NaN/inf activations" in w for w in report["warnings"])


# -- re-batching for models with fixed batch sizes ------------------------------------------------


def _stream(sizes: list[int]) -> DataStream:
    def batches():
        start = 0
        for size in sizes:
            yield torch.arange(start, start + size, dtype=torch.float32)[:, None]
            start += size
    return DataStream(source="<test>", batches=batches, num_samples=sum(sizes))


@pytest.mark.parametrize("sizes,low,high,preferred,expected,dropped", [
    ([7, 7, 7], 4, 4, 7, [4, 4, 4, 4, 4], 1),        # fixed 4: 21 -> 5 x 4, 1 left out
    ([10, 1], 2, None, 10, [11], 0),                  # min 2: a tail of 1 joins the batch before it
    ([10, 10, 1], 2, 10, 10, [10, 9, 2], 0),          # ... or splits it when the join is too big
    ([3, 3], 1, 4, 5, [4, 2], 0),                     # max 4 below the 5 asked for
])
def test_fit_batches(sizes, low, high, preferred, expected, dropped):
    fitted = fit_batches(_stream(sizes), low, high, preferred)
    batches = list(fitted.batches())
    assert [len(b) for b in batches] == expected
    seen = torch.cat(batches).flatten().tolist()
    assert seen == list(range(sum(sizes) - dropped))
    assert any(f"last {dropped} sample(s) were not scanned" in note for note in fitted.notes) == bool(dropped)


def test_fit_batches_says_re_batched_only_when_the_batches_change():
    # issue 10: a .pt2 exported with Dim("batch", min=2) scanned at the batch size asked for changes nothing.
    same = fit_batches(_stream([32, 32]), 2, None, 32)
    assert [len(b) for b in same.batches()] == [32, 32]
    assert not any("re-batched" in note for note in same.notes)
    joined = fit_batches(_stream([32, 1]), 2, None, 32)
    assert [len(b) for b in joined.batches()] == [33]
    assert joined.notes[-1] == ("the last 1 sample(s) joined the batch before them: the model accepts batches of "
                                "2 to any samples")
    fixed = fit_batches(_stream([7, 7]), 4, 4, 7)
    assert "the model accepts batches of exactly 4 samples; data re-batched to 4" in fixed.notes
