"""Scans across processes: torchrun (gloo, 2 CPU processes), --shard I/N and merge.

The model carries its truth: relu is called twice (6 then 3 dead units), the ELU sits
at its floor on 2 units (dead and saturated), and a functional F.relu after it has
those 2 units dead. The data has 101 samples, so 2 ranks or 3 shards never split it
evenly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import deadrelu
from deadrelu import distributed, ranks
from deadrelu.cli import app
from deadrelu.distributed import Shard, restrict
from deadrelu.errors import ConfigError, DataLoadError, ModelLoadError
from deadrelu.load.data import DataStream, as_stream
from deadrelu.merge import merge_results
from truth_models import bounded_inputs

REPO = Path(__file__).resolve().parents[1]
SAMPLES = 101
# the ELU's 2 units pinned at its floor keep no gradient there but are counted as saturated, not dead
EXPECTED_DEAD = {"relu#0": 6, "relu#1": 3, "elu": 0, "<root>:relu#0": 2}

ARCH_SOURCE = """
import torch
from torch import nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(10, 16), nn.Linear(16, 16), nn.Linear(16, 8)
        self.relu, self.elu, self.head = nn.ReLU(), nn.ELU(), nn.Linear(8, 1)
        with torch.no_grad():
            self.fc1.bias.fill_(2.0)
            self.fc1.bias[:6] = -100.0
            self.fc2.bias.fill_(2.0)
            self.fc2.bias[:3] = -100.0
            self.fc3.bias.fill_(2.0)
            self.fc3.bias[:2] = -100.0

    def forward(self, x):
        h = self.relu(self.fc1(x))
        h = self.relu(self.fc2(h))
        return self.head(F.relu(self.elu(self.fc3(h))))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("distributed")
    (folder / "arch.py").write_text(ARCH_SOURCE)
    import runpy
    model = runpy.run_path(str(folder / "arch.py"))["Net"]()
    torch.save(model.state_dict(), folder / "model.pt")
    np.save(folder / "data.npy", bounded_inputs(SAMPLES, 10).numpy())
    return {"dir": folder, "arch": folder / "arch.py", "model": folder / "model.pt", "data": folder / "data.npy"}


@pytest.fixture(scope="module")
def scans(files) -> dict[str, dict[str, Any]]:
    """The whole scan (whole.json) and its three shards (part-I.json), through the CLI."""
    from typer.testing import CliRunner
    runner = CliRunner()
    made = {"whole": cli_json(runner, files, "whole.json")}
    for index in range(3):
        made[f"part-{index}"] = cli_json(runner, files, f"part-{index}.json", "--shard", f"{index}/3")
    return made


def scan_args(files: dict[str, Path], *extra: str) -> list[str]:
    return ["scan", str(files["model"]), str(files["data"]), "--arch", f"{files['arch']}:Net", "--batch-size", "8",
            "--device", "cpu", *extra]


def cli_json(runner, files: dict[str, Path], name: str, *extra: str) -> dict[str, Any]:
    out = files["dir"] / name
    result = runner.invoke(app, scan_args(files, "--json", str(out), "-q", *extra))
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def failed_ranks(output: str) -> dict[int, int]:
    """torchrun's failure summary: ``{rank: exit code}`` of every rank that exited non-zero."""
    return {int(rank): int(code) for rank, code in
            re.findall(r"rank\s*:\s*(\d+) \(local_rank.*?\n\s*exitcode\s*:\s*(-?\d+)", output)}


def assert_same_scan(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same sites, verdicts and counts; sums equal to float64 rounding."""
    assert got["data"]["samples"] == want["data"]["samples"]
    assert [s["name"] for s in got["sites"]] == [s["name"] for s in want["sites"]]
    for mine, theirs in zip(got["sites"], want["sites"]):
        for key in ("units", "observations", "dead_units", "saturated_units", "dormant_units", "nonfinite",
                    "producer"):
            assert mine[key] == theirs[key], (mine["name"], key)
        for field, values in theirs["unit_stats"].items():
            a = np.array([np.nan if v is None else v for v in mine["unit_stats"][field]], dtype=float)
            b = np.array([np.nan if v is None else v for v in values], dtype=float)
            if field in ("observations", "active", "at_floor", "at_ceiling", "nonfinite"):
                assert np.array_equal(a, b, equal_nan=True), (mine["name"], field)
            else:
                assert np.allclose(a, b, rtol=1e-12, atol=0, equal_nan=True), (mine["name"], field)
    for key in ("sites", "units", "dead", "saturated", "dormant", "nonfinite_activations"):
        assert got["summary"][key] == want["summary"][key]
    assert got["coverage"] == want["coverage"]


# -- shards of streams ------------------------------------------------------------------------


def _samples(stream: DataStream) -> list[float]:
    out: list[float] = []
    for batch in stream.batches():
        tensor = batch[0] if isinstance(batch, (tuple, list)) else batch
        out.extend(torch.as_tensor(tensor)[:, 0].tolist())
    return out


def _streams() -> dict[str, DataStream]:
    from torch.utils.data import DataLoader, TensorDataset

    data = torch.arange(SAMPLES, dtype=torch.float32)[:, None].repeat(1, 3)
    dataset = TensorDataset(data)
    known = DataStream(source="<batches>", batches=lambda: iter(data.split(7)), num_samples=SAMPLES)
    return {"array": as_stream(data.numpy(), batch_size=8), "dataset": as_stream(dataset, batch_size=8),
            "loader": as_stream(DataLoader(dataset, batch_size=8)), "batches of known count": known}


@pytest.mark.parametrize("kind", ["array", "dataset", "loader", "batches of known count"])
def test_shards_are_contiguous_blocks_that_cover_every_sample_once(kind):
    whole = _samples(_streams()[kind])
    parts = [_samples(restrict(_streams()[kind], Shard(index, 3))) for index in range(3)]
    # Whole batches of 8 where the stream knows its batch size (13 batches: 4, 4, 5).
    assert [len(p) for p in parts] == ([33, 34, 34] if kind == "batches of known count" else [32, 32, 37])
    assert sum(parts, []) == whole == list(range(SAMPLES))
    # A seekable source reads only its block; the others are cut at the block's edges.
    assert (restrict(_streams()[kind], Shard(1, 3)).select is not None) == (kind != "batches of known count")


def test_nested_shards_compose_to_the_same_split():
    stream = restrict(_streams()["array"], Shard(1, 2))  # batches 6..12: samples 48..100
    assert stream.first_sample == 48
    parts = [_samples(restrict(stream, Shard(index, 2))) for index in range(2)]
    assert parts == [list(range(48, 72)), list(range(72, 101))]


def test_stream_of_unknown_length_is_split_by_batch_with_a_note():
    data = torch.arange(20, dtype=torch.float32)[:, None]
    stream = as_stream((chunk for chunk in data.split(6)))  # a generator: no length
    part = restrict(stream, Shard(1, 2))
    assert _samples(part) == list(range(6, 12)) + list(range(18, 20))
    assert any("by batch" in note for note in part.notes)


def test_shard_parse_and_empty_shard():
    assert Shard.parse("2/5") == Shard(2, 5)
    for bad in ("5/5", "a/b", "1", "-1/2"):
        with pytest.raises(ConfigError):
            Shard.parse(bad)
    with pytest.raises(DataLoadError, match="holds no sample"):
        restrict(as_stream(np.zeros((2, 3), dtype=np.float32)), Shard(0, 3))


# -- shards that merge ------------------------------------------------------------------------


def test_three_shards_merged_equal_the_whole_scan(runner, files, scans):
    whole = scans["whole"]
    assert {s["name"]: s["dead"] for s in whole["sites"]} == EXPECTED_DEAD
    assert whole["sites"][2]["saturated"] == 2 and whole["environment"]["world_size"] == 1
    parts = [scans[f"part-{i}"] for i in range(3)]
    assert [p["data"]["samples"] for p in parts] == [32, 32, 37]
    assert [p["data"]["shard"] for p in parts] == [{"index": i, "count": 3, "of": SAMPLES} for i in range(3)]
    out = files["dir"] / "merged.json"
    merged_run = runner.invoke(app, ["merge", *(str(files["dir"] / f"part-{i}.json") for i in (2, 0, 1)),
                                     "--json", str(out), "-q"])
    assert merged_run.exit_code == 0, merged_run.output
    merged = json.loads(out.read_text())
    assert_same_scan(merged, whole)
    assert merged["warnings"] == whole["warnings"]  # the parts' "shard I/3" notes are not carried over
    assert merged["data"]["shard"] is None and merged["environment"]["merged_from"] == 3


def test_merge_rejudges_with_the_thresholds_given(runner, files, scans):
    parts = [deadrelu.ScanResult.from_json(files["dir"] / f"part-{i}.json") for i in range(3)]
    default = merge_results(parts)
    strict = merge_results(parts, thresholds={"tau": 0.9})
    assert strict.settings.thresholds.tau == 0.9
    assert strict.summary.dormant > default.summary.dormant
    assert strict.summary.dead == default.summary.dead


def _edited(files: dict[str, Path], source: str, name: str, edit) -> Path:
    data = json.loads((files["dir"] / source).read_text())
    edit(data)
    path = files["dir"] / name
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("case, message", [
    ("model", r"part-1-model.json and .*part-0.json scanned different models \(sha256 0000"),
    ("data", r"scanned different datas? \(sha256 ffff"),
    ("settings", r"different settings \(functional False vs True\)"),
    ("overlap", r"both shard 0/3: overlapping shards"),
    ("missing", r"missing shard\(s\) 1/3: 2 of 3 given"),
    ("whole", r"is a scan of the whole data, not a shard"),
])
def test_merge_refuses_parts_of_different_scans(runner, files, scans, case, message):
    part = lambda i: str(files["dir"] / f"part-{i}.json")  # noqa: E731
    edits = {"model": lambda d: d["model"].update(sha256="0" * 64),
             "data": lambda d: d["data"].update(sha256="f" * 64),
             "settings": lambda d: d["settings"].update(functional=False)}
    if case in edits:
        given = [part(0), str(_edited(files, "part-1.json", f"part-1-{case}.json", edits[case])), part(2)]
    else:
        given = {"overlap": [part(0), part(0), part(1), part(2)], "missing": [part(0), part(2)],
                 "whole": [str(files["dir"] / "whole.json"), part(1)]}[case]
    result = runner.invoke(app, ["merge", *given])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output.replace("\n", " ")), result.output


def test_merge_with_allow_missing_is_marked_partial(runner, files, scans):
    result = runner.invoke(app, ["merge", str(files["dir"] / "part-0.json"), str(files["dir"] / "part-2.json"),
                                 "--allow-missing", "--json", "-"])
    assert result.exit_code == 0, result.output
    merged = json.loads(result.stdout)
    assert merged["data"]["samples"] == 32 + 37 and merged["data"]["partial"] is True
    assert merged["data"]["shard"] == {"index": [0, 2], "count": 3, "of": SAMPLES, "missing": [1]}
    assert any(w.startswith("PARTIAL: merged 2 of 3 shards; missing shard(s) 1") for w in merged["warnings"])


def test_merge_gate_fails_with_exit_1(runner, files, scans):
    result = runner.invoke(app, ["merge", *(str(files["dir"] / f"part-{i}.json") for i in range(3)),
                                 "--max-layer-dead-ratio", "0.3", "-q"])
    assert result.exit_code == 1, result.output
    assert "Gate FAILED" in result.output


# -- torchrun ---------------------------------------------------------------------------------


def test_torchrun_scan_equals_the_single_process_scan_and_every_rank_exits_alike(files, scans):
    """One torchrun run (they take seconds): 2 ranks on 48 and 53 samples give the
    single-process JSON; the gate fails, and both ranks exit 1; rank 0 alone prints."""
    whole = scans["whole"]
    out = files["dir"] / "torchrun.json"
    run = torchrun("-m", "deadrelu", *scan_args(files, "--json", str(out), "--max-dead-ratio", "0.1"))
    output = run.stdout + run.stderr
    assert run.returncode != 0 and failed_ranks(output) == {0: 1, 1: 1}, output
    assert run.stdout.count("Activation sites") == 1 and run.stdout.count("Gate FAILED") == 1, output
    got = json.loads(out.read_text())
    assert_same_scan(got, whole)
    assert got["environment"]["world_size"] == 2 and got["data"]["shard"] is None
    assert got["warnings"] == whole["warnings"]
    assert got["gate"]["passed"] is False


def test_fsdp_model_scanned_with_ranks_in_lockstep(files):
    """FSDP2 on a CPU mesh (gloo): the forward pass all-gathers parameters, so ranks with
    10 and 11 batches of 5 (21 batches in all) must run as many forward passes; the
    shorter one feeds an empty batch."""
    import runpy
    model = runpy.run_path(str(files["arch"]))["Net"]()
    model.load_state_dict(torch.load(files["model"], weights_only=True))
    want = json.loads(deadrelu.scan(model, np.load(files["data"]), batch_size=5).to_json())
    out = files["dir"] / "fsdp.json"
    run = torchrun(str(REPO / "tests" / "distributed_worker.py"), "fsdp", str(files["arch"]), str(files["model"]),
                   str(files["data"]), str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    got = json.loads(out.read_text())
    assert_same_scan(got, want)
    assert {s["name"]: s["dead"] for s in got["sites"]} == EXPECTED_DEAD
    assert got["environment"]["world_size"] == 2


def test_a_scan_joins_a_process_group_only_when_asked(files):
    """Issue 19: rank 0 of an initialised group scans alone (no ``group=``): it neither waits for
    rank 1 nor combines with it, and its result is the single-process one."""
    import runpy
    model = runpy.run_path(str(files["arch"]))["Net"]()
    model.load_state_dict(torch.load(files["model"], weights_only=True))
    want = json.loads(deadrelu.scan(model, np.load(files["data"]), batch_size=5).to_json())
    out = files["dir"] / "alone.json"
    run = torchrun(str(REPO / "tests" / "distributed_worker.py"), "alone", str(files["arch"]), str(files["model"]),
                   str(files["data"]), str(out), timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    got = json.loads(out.read_text())
    assert_same_scan(got, want)
    assert got["environment"]["world_size"] == 1 and got["data"]["samples"] == 101


def test_group_true_needs_an_initialised_group(files):
    with pytest.raises(ConfigError, match=r"group=True, but no process group is initialised"):
        deadrelu.scan(torch.nn.Sequential(torch.nn.Linear(10, 4), torch.nn.ReLU()), np.load(files["data"]),
                      group=True)


def test_a_failure_on_one_rank_fails_every_rank(files):
    data = np.load(files["data"])
    data[90, 3] = np.nan  # in rank 1's block (batches of 5: samples 55..100)
    path = files["dir"] / "nan.npy"
    np.save(path, data)
    run = torchrun(str(REPO / "tests" / "distributed_worker.py"), "plain", str(files["arch"]), str(files["model"]),
                   str(path), str(files["dir"] / "never.json"))
    output = run.stdout + run.stderr
    assert failed_ranks(output) == {0: 2, 1: 2}, output
    assert "rank 1: error: input holds NaN/inf: sample 90 is the first" in output
    assert "rank 0: error: rank 1 of 2 failed: input holds NaN/inf" in output


HANG_SOURCE = """
import os
import time
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.relu = nn.Linear(10, 4), nn.ReLU()

    def forward(self, x):
        if os.environ.get("RANK") == "0":
            time.sleep(3600)  # rank 0 hangs in its first forward pass
        return self.relu(self.fc(x))
"""


def error_lines(stderr: str) -> list[str]:
    """deadrelu's own error and hint lines (torchrun's log lines start otherwise)."""
    return [line for line in stderr.splitlines() if line.startswith(("error:", "hint:"))]


def test_bad_input_on_one_rank_is_one_line_printed_once_and_exit_2_on_every_rank(files):
    """The CLI under torchrun: a NaN in rank 1's block (batches of 8: samples 48..100)."""
    data = np.load(files["data"])
    data[90, 3] = np.nan
    path = files["dir"] / "nan-cli.npy"
    np.save(path, data)
    args = scan_args(files, "-q")
    args[2] = str(path)
    run = torchrun("-m", "deadrelu", *args)
    output = run.stdout + run.stderr
    assert failed_ranks(output) == {0: 2, 1: 2}, output
    assert error_lines(run.stderr) == [
        "error: rank 1 of 2 failed: input holds NaN/inf: sample 90 is the first (1 in its batch)",
        "hint: clean the data, or pass --nonfinite skip (drop them) / keep (scan them)"], output
    # torchrun's own summary quotes the line (its error file), not "To enable traceback see ...".
    assert output.count("traceback : rank 1 of 2 failed: input holds NaN/inf") == 2, output
    assert "To enable traceback" not in output


def test_a_rank_that_hangs_is_named_after_the_timeout(files):
    """Rank 0 hangs: rank 1 waits --timeout 5 s at the combine step, prints the line rank 0
    cannot, and exits 2; torchrun then stops rank 0."""
    arch = files["dir"] / "hang.py"
    arch.write_text(HANG_SOURCE)
    run = torchrun("-m", "deadrelu", "scan", "--model", f"{arch}:Net", str(files["data"]), "--batch-size", "8",
                   "--device", "cpu", "-q", "--timeout", "5", timeout=150)
    output = run.stdout + run.stderr
    assert error_lines(run.stderr) == [
        "error: rank 0 of 2 did not reach the combine step (the end of the scan) within 5 s (hung, slow or gone)",
        "hint: see that rank's output; --timeout N waits longer for slow ranks"], output
    assert failed_ranks(output)[1] == 2, output


def test_ranks_given_different_data_are_refused(files):
    """Each rank reads its own copy (a file per rank, as on two nodes): same sample count,
    one value changed. The ranks check the copies before the scan and all refuse."""
    data = np.load(files["data"])
    np.save(files["dir"] / "copy-0.npy", data)
    data[7, 0] += 1.0
    np.save(files["dir"] / "copy-1.npy", data)
    run = torchrun(str(REPO / "tests" / "distributed_worker.py"), "plain", str(files["arch"]), str(files["model"]),
                   str(files["dir"] / "copy-{rank}.npy"), str(files["dir"] / "never.json"))
    output = run.stdout + run.stderr
    assert failed_ranks(output) == {0: 2, 1: 2}, output
    for rank in (0, 1):
        assert re.search(rf"rank {rank}: error: \S*copy-{rank}.npy: the 2 ranks were given different data "
                         r"\(SHA-256 differs\): rank 0: sha256 [0-9a-f]{12}; rank 1: sha256 [0-9a-f]{12}\n",
                         output), output
    assert not (files["dir"] / "never.json").exists()


def test_ranks_with_different_sample_counts_are_refused_with_the_ranks_named(monkeypatch):
    group = distributed.ScanGroup(rank=0, world_size=3, device=torch.device("cpu"))
    facts = [{"samples": 101, "sha256": "ab" * 32}, {"samples": 100, "sha256": "cd" * 32},
             {"samples": 101, "sha256": "ab" * 32}]
    monkeypatch.setattr(distributed.ScanGroup, "meet", lambda self, step, payload, what: facts)
    stream = DataStream(source="data.npy", batches=lambda: iter(()), num_samples=101, sha256="ab" * 32)
    with pytest.raises(DataLoadError, match=re.escape(
            "data.npy: the 3 ranks were given different data (sample count and SHA-256 differ): "
            "ranks 0, 2: 101 samples, sha256 abababababab; rank 1: 100 samples, sha256 cdcdcdcdcdcd")):
        group.check_same_data(stream)
    facts[1] = facts[0]
    group.check_same_data(stream)  # the same data on every rank: nothing to say


def test_ranks_that_scanned_different_models_are_refused_before_combining(monkeypatch, files, scans):
    local = deadrelu.ScanResult.from_json(files["dir"] / "whole.json")
    other = local.to_dict(unit_stats=False)
    other["sites"][0]["units"] = 8  # relu#0 has 16 units in this rank's model
    monkeypatch.setattr(distributed.ScanGroup, "meet",
                        lambda self, step, payload, what: [payload, json.loads(json.dumps(other))])
    group = distributed.ScanGroup(rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(ModelLoadError, match=r"the ranks scanned different models: site relu#0 has 8 units on "
                                             r"rank 1, 16 on rank 0"):
        group.combine(local)


def test_a_meeting_names_the_ranks_that_did_not_arrive_and_sees_a_failure_posted_instead(group_of_one,
                                                                                          monkeypatch):
    """``deadrelu.ranks`` in a real store (a group of one process, told there are 3 ranks)."""
    monkeypatch.setattr(ranks, "_process", ranks._Process())  # the ranks given up on stay this test's
    with pytest.raises(ranks.RankError, match=r"ranks 1, 2 of 3 did not reach the test step within 0.2 s"):
        ranks.meet(0, 3, "test-a", {"x": 1}, what="the test step", timeout=0.2)
    assert ranks.absent_ranks() == {1, 2}
    ranks.post(2, "test-b", {"y": 2})
    ranks.post(1, "test-failed", {"kind": "DataLoadError", "message": "bad", "hint": None})
    seen = ranks.meet(0, 3, "test-b", {"y": 0}, what="the test step", watch=("test-failed",), timeout=5)
    assert seen == ranks.NotComing(1, "test-failed", {"kind": "DataLoadError", "message": "bad", "hint": None})
    ranks.post(1, "test-b", {"y": 1})
    assert ranks.meet(0, 3, "test-b", {"y": 0}, what="the test step", timeout=5) == {0: {"y": 0}, 1: {"y": 1},
                                                                                       2: {"y": 2}}


def _suggested(suggestions: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    return [(s["id"], s["title"], list(s["sites"])) for s in suggestions]


def test_sharded_merged_and_torchrun_scans_of_a_resnet_make_the_single_process_suggestions(files):
    """Issue 19.6: the parts' producer links survive merging, so the weight rules read the
    traced layer instead of guessing by registration order. broken_resnet's truth: β = -10
    on channels 0-7 of layer3.4.bn2 kills 8 of 16 units at layer3.4.relu#1."""
    from real_nets import broken_resnet, resnet_data

    from deadrelu.judge.suggestions import suggest
    model, data = broken_resnet(), resnet_data()
    whole = deadrelu.scan(model, data, batch_size=8)
    want = _suggested(whole.suggestions)
    assert ("batchnorm-dead", "layer3.4.relu#1 ← layer3.4.bn2: β < −3·|γ| on channels 0–7",
            ["layer3.4.relu#1"]) in want
    links = [site.producer for site in whole.sites]
    assert None not in links and len(links) == 49

    merged = merge_results([deadrelu.scan(model, data, batch_size=8, shard=f"{index}/2") for index in range(2)])
    assert [site.producer for site in merged.sites] == links
    assert _suggested(merged.with_suggestions(suggest(merged, model)).suggestions) == want

    nets = str(REPO / "tests" / "real_nets.py")
    out = files["dir"] / "resnet-torchrun.json"
    run = torchrun("-m", "deadrelu", "scan", "--model", f"{nets}:broken_resnet", "--data", f"{nets}:resnet_data",
                   "--batch-size", "8", "--device", "cpu", "--json", str(out), "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    combined = json.loads(out.read_text())
    assert combined["environment"]["world_size"] == 2 and combined["data"]["samples"] == 24
    assert [site["producer"] for site in combined["sites"]] == [link.to_dict() for link in links]
    assert _suggested(combined["suggestions"]) == want


# -- devices ----------------------------------------------------------------------------------


def test_auto_device_leaves_a_model_spread_over_devices_in_place(monkeypatch, files):
    import runpy
    model = runpy.run_path(str(files["arch"]))["Net"]()
    monkeypatch.setattr(distributed, "model_devices",
                        lambda m: [torch.device("cuda", 0), torch.device("cuda", 1)])
    assert distributed.spread_over_devices(model, "auto")
    assert not distributed.spread_over_devices(model, "cpu")  # an explicit device is obeyed
    moved = []
    monkeypatch.setattr(model, "to", lambda *a, **k: moved.append(a) or model)
    result = deadrelu.scan(model, np.load(files["data"]), device="auto", batch_size=16)
    assert moved == [] and result.environment["devices"] == ["cuda:0", "cuda:1"]
    assert result.environment["device"] == "cpu"  # inputs go where the first parameter is


def test_python_dash_m_deadrelu_runs_the_cli():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "deadrelu", "version"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("deadrelu ")


@pytest.fixture
def group_of_one(tmp_path):
    """A gloo process group of one process (what DTensor and FSDP2 need), destroyed after."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    from torch.distributed.device_mesh import init_device_mesh
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def test_tensor_parallel_model_is_refused_and_fsdp_is_scanned(group_of_one, files):
    import runpy

    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    build = runpy.run_path(str(files["arch"]))["Net"]
    data = np.load(files["data"])
    parallel = parallelize_module(build(), group_of_one, {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})
    with pytest.raises(ConfigError, match=r"fc1.weight is a DTensor \(Shard\(dim=0\)\) on a 1-D mesh outside FSDP"):
        deadrelu.scan(parallel, data, batch_size=16)
    sharded = build()
    fully_shard(sharded, mesh=group_of_one)
    assert distributed.needs_lockstep(sharded)
    result = deadrelu.scan(sharded, data, batch_size=16)  # a group of one: no lockstep, no combine
    assert {site.name: site.dead for site in result.sites} == EXPECTED_DEAD
    assert result.environment["world_size"] == 1


def test_merge_needs_no_torch(files, scans):
    """`deadrelu merge` runs where torch cannot be imported (a laptop merging cluster parts)."""
    block = ("import sys\n"
             "class Block:\n"
             "    def find_spec(self, name, path, target=None):\n"
             "        if name == 'torch' or name.startswith('torch.'):\n"
             "            raise ImportError('torch is blocked in this test')\n"
             "sys.meta_path.insert(0, Block())\n"
             "from deadrelu.cli import main\n"
             "main()\n")
    parts = [str(files["dir"] / f"part-{i}.json") for i in range(3)]
    run = subprocess.run([sys.executable, "-c", block, "merge", *parts, "--json", "-"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["summary"]["dead"] == scans["whole"]["summary"]["dead"]
