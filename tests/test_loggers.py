"""Monitor and scan results in TensorBoard, MLflow and W&B, written by the real libraries offline
and read back: every logged value equals ``monitor.history`` (whose truth test_monitor checks
against a hand-made kill schedule)."""

from __future__ import annotations

import glob
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import scan_files
from test_monitor import EVERY, STEPS, bounded, make_model, train
from truth_models import ReusedReLUBlock

import deadrelu
from deadrelu.errors import ConfigError
from deadrelu.loggers import Logger, LogPoint, LoggerError, MissingExtraError, TagNames, log_scan, open_loggers

SITE_SCALARS = ("dead_ratio", "dormant_ratio", "newly_dead", "revived")


def expected_scalars(history) -> dict[str, dict[int, float]]:
    """metric name -> {step: value}, computed from ``monitor.history`` (sites "1" and "4" are their own tags)."""
    want: dict[str, dict[int, float]] = {}
    for step, rows in history.groupby("step"):
        units = rows["units"].sum()
        want.setdefault("deadrelu/dead_ratio", {})[step] = rows["dead"].sum() / units
        want.setdefault("deadrelu/dormant_ratio", {})[step] = rows["dormant"].sum() / units
        for row in rows.itertuples():
            values = {"dead_ratio": row.dead_ratio, "dormant_ratio": row.dormant / row.units,
                      "newly_dead": row.newly_dead, "revived": row.revived}
            for name in SITE_SCALARS:
                want.setdefault(f"deadrelu/{row.site}/{name}", {})[step] = values[name]
    return want


def run_monitor(**loggers) -> deadrelu.Monitor:
    model = make_model()
    monitor = deadrelu.Monitor(model, probe=bounded(64), every=EVERY, **loggers)
    train(model, monitor, bounded(64, seed=5))
    monitor.close()
    return monitor


def close_to(got: dict[int, float], want: dict[int, float]) -> bool:
    """Logged values (TensorBoard keeps float32) against the history's."""
    return got.keys() == want.keys() and all(got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-7) for s in want)


# -- names ------------------------------------------------------------------------------------


def test_tag_names_are_clean_unique_and_stable() -> None:
    tags = TagNames()
    assert tags("layer1.0.relu#1") == "layer1.0.relu_1"
    assert tags("layer1.0.relu_1") == "layer1.0.relu_1_2"  # a different site that cleans to the same tag
    assert tags("layer1.0.relu#1") == "layer1.0.relu_1"  # the same site keeps its tag all run long
    assert tags("<model>:relu#0") == "model_relu_0"
    assert tags("dead_ratio") == "dead_ratio_2"  # never shadows the totals deadrelu/dead_ratio
    assert tags("..") == "site" and tags("") == "site_2"
    assert tags("a/b c") == "a_b_c"  # no extra level of hierarchy
    assert all(len(tag) <= 180 for tag in (tags("x" * 400), tags("x" * 401)))
    assert tags("x" * 400) != tags("x" * 401)


# -- TensorBoard --------------------------------------------------------------------------------


def tensorboard_events(folder: Path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'deadrelu[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    events.Reload()
    return events


def test_monitor_writes_tensorboard_values_equal_to_history(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'deadrelu[tensorboard]')")
    monitor = run_monitor(tensorboard=tmp_path / "tb")
    events = tensorboard_events(tmp_path / "tb")
    want = expected_scalars(monitor.history)
    assert set(events.Tags()["scalars"]) == {*want, "deadrelu/dead"}
    for name, values in want.items():
        assert close_to({e.step: e.value for e in events.Scalars(name)}, values), name
    # The kill schedule: units 1, 3, 7 of site "1" die at step 5 (seen at 8), unit 3 revives at 17 (seen at 20).
    assert {e.step: e.value for e in events.Scalars("deadrelu/1/newly_dead")} == {0: 0, 4: 0, 8: 3, 12: 1, 16: 0,
                                                                                20: 0}
    assert {e.step: e.value for e in events.Scalars("deadrelu/1/revived")}[20] == 1
    # One histogram of per-unit active rates per site and record: every unit counted once.
    assert sorted(events.Tags()["histograms"]) == ["deadrelu/1/active_rate", "deadrelu/4/active_rate"]
    for tag, units in (("deadrelu/1/active_rate", 16), ("deadrelu/4/active_rate", 8)):
        histograms = events.Histograms(tag)
        assert [h.step for h in histograms] == list(range(0, STEPS, EVERY))
        assert all(h.histogram_value.num == units for h in histograms)
    # 6 records, heat map every 10: drawn once, at close, at the last record's step.
    assert [(image.step, image.width > 100) for image in events.Images("deadrelu/heat_map")] == [(20, True)]


def test_heat_map_every_n_records(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'deadrelu[tensorboard]')")
    records = run_monitor().records  # steps 0, 4, ..., 20
    loggers = open_loggers(tensorboard=tmp_path, heat_map_every=2)
    for count in range(1, len(records) + 1):
        loggers.log(records[:count])
    loggers.close()  # the 6th record was drawn already: no extra image at close
    assert [image.step for image in tensorboard_events(tmp_path).Images("deadrelu/heat_map")] == [4, 12, 20]


def test_reused_relu_sites_get_distinct_tags(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'deadrelu[tensorboard]')")
    model = ReusedReLUBlock()
    monitor = deadrelu.Monitor(model, probe=torch.rand(32, 6) * 2 - 1, every=1, tensorboard=tmp_path)
    monitor.step(0)
    monitor.close()
    assert list(monitor.history["site"]) == ["relu#0", "relu#1"]
    events = tensorboard_events(tmp_path)
    assert events.Scalars("deadrelu/relu_0/dead_ratio")[0].value == pytest.approx(3 / 12)
    assert events.Scalars("deadrelu/relu_1/dead_ratio")[0].value == pytest.approx(5 / 12)
    assert events.Scalars("deadrelu/relu_1/newly_dead")[0].value == 5


def test_scan_cli_writes_one_tensorboard_step(runner, files, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'deadrelu[tensorboard]')")
    result = scan_files(runner, files, "--tensorboard", tmp_path / "tb", "--step", 7, "-q")
    assert result.exit_code == 0, result.output
    events = tensorboard_events(tmp_path / "tb")
    # make_files: exactly 8 of 32 units dead at the one site "1"
    assert [(e.step, e.value) for e in events.Scalars("deadrelu/dead_ratio")] == [(7, 0.25)]
    assert [(e.step, e.value) for e in events.Scalars("deadrelu/1/newly_dead")] == [(7, 8.0)]
    assert [(e.step, e.value) for e in events.Scalars("deadrelu/1/revived")] == [(7, 0.0)]
    assert [h.histogram_value.num for h in events.Histograms("deadrelu/1/active_rate")] == [32]
    assert [image.step for image in events.Images("deadrelu/heat_map")] == [7]


def test_missing_library_is_one_line_naming_the_extra(runner, files, tmp_path: Path, monkeypatch) -> None:
    for module in ("tensorboard", "torch.utils.tensorboard", "mlflow", "wandb"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    for options, extra in (({"tensorboard": tmp_path}, "tensorboard"), ({"mlflow": True}, "mlflow"),
                           ({"wandb": True}, "wandb")):
        with pytest.raises(MissingExtraError, match=rf"pip install 'deadrelu\[{extra}\]'") as caught:
            deadrelu.Monitor(make_model(), probe=bounded(8), **options)
        assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ModuleNotFoundError)
    for option, extra in (("--tensorboard", "tensorboard"), ("--mlflow", "mlflow"), ("--wandb", "wandb")):
        result = scan_files(runner, files, *([option, tmp_path / "tb"] if extra == "tensorboard" else [option]), "-q")
        assert result.exit_code == 2
        assert f"pip install 'deadrelu[{extra}]'" in result.output
        assert "units dead" not in result.output  # refused before the scan, not after it
    assert not (tmp_path / "tb").exists()


def test_a_fourth_logger_is_one_small_class() -> None:
    class Collect(Logger):
        def __init__(self) -> None:
            self.points: list[LogPoint] = []
            self.closed = False

        def log_point(self, point: LogPoint) -> None:
            self.points.append(point)

        def close(self) -> None:
            self.closed = True

    collect = Collect()
    monitor = run_monitor(loggers=[collect])
    assert collect.closed
    want = expected_scalars(monitor.history)
    for name, values in want.items():
        assert {p.step: p.scalars[name] for p in collect.points} == pytest.approx(values), name
    assert [len(p.rates["1"]) for p in collect.points] == [16] * 6


class Collect(Logger):
    """Keeps every point it is given (a logger that works)."""

    def __init__(self) -> None:
        self.points: list[LogPoint] = []

    def log_point(self, point: LogPoint) -> None:
        self.points.append(point)


class Down(Logger):
    """A logger whose server is down: every call fails."""

    def log_point(self, point: LogPoint) -> None:
        raise ConnectionError("tracking server refused the connection")


def test_a_failing_logger_warns_once_and_training_goes_on() -> None:
    collect = Collect()
    with pytest.warns(RuntimeWarning, match="the Down failed at step 0 .*tracking server refused") as caught:
        monitor = run_monitor(loggers=[Down(), collect])
    assert len([w for w in caught if "Down" in str(w.message)]) == 1  # once, not at every record
    steps = sorted(monitor.history["step"].unique())
    assert [p.step for p in collect.points] == steps  # the working logger got every record
    assert len(steps) == 6


def test_failures_are_counted_per_logger() -> None:
    from deadrelu.loggers import LoggerSet
    target = LoggerSet([Down(), Collect()], heat_map_every=0)
    monitor = run_monitor()
    with pytest.warns(RuntimeWarning):
        for n in range(1, len(monitor.records) + 1):
            target.log(monitor.records[:n])
    assert target.failures == {"Down": len(monitor.records)}
    assert len(target.loggers[1].points) == len(monitor.records)


def test_a_failing_logger_in_one_scan_is_the_commands_error() -> None:
    result = deadrelu.scan(make_model(), bounded(32))
    with pytest.raises(LoggerError, match="the Down failed at step 3: tracking server refused") as caught:
        log_scan(result, step=3, loggers=[Down()])
    assert caught.value.exit_code == 2 and "scan itself finished" in caught.value.hint


# -- the framework callbacks feed the trainer's own loggers -------------------------------------------


def test_lightning_callback_writes_into_the_trainers_tensorboard_logger(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'deadrelu[tensorboard]')")
    from test_integrations import PROBE, _lightning, expected, fit_lightning
    L = _lightning()
    from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoard

    from deadrelu.integrations.lightning import DeadReluCallback
    callback = DeadReluCallback(probe=PROBE, every=4, module="net")
    logger = LightningTensorBoard(tmp_path, name="tb")
    fit_lightning(L, callback, tmp_path, logger=logger)
    events = tensorboard_events(Path(logger.log_dir))
    for name, values in expected_scalars(callback.history).items():
        assert close_to({e.step: e.value for e in events.Scalars(name)}, values), name
    assert {e.step: e.value for e in events.Scalars("deadrelu/1/dead_ratio")} == \
        pytest.approx({step: len(expected(step)) / 12 for step in (0, 4, 8, 12)})
    assert [h.histogram_value.num for h in events.Histograms("deadrelu/1/active_rate")] == [12] * 4
    assert [image.step for image in events.Images("deadrelu/heat_map")] == [12]


def test_transformers_callback_writes_into_the_trainers_tensorboard_folder(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'deadrelu[tensorboard]')")
    pytest.importorskip("transformers", reason="transformers is not installed (pip install 'deadrelu[hf]')")
    from test_integrations import PROBE, expected, fit_hf

    from deadrelu.integrations.transformers import DeadReluCallback
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    callback = DeadReluCallback(probe=PROBE, every=4)
    fit_hf(callback, tmp_path, report_to=["tensorboard"])
    events = tensorboard_events(tmp_path / "tb")
    assert "train/loss" in events.Tags()["scalars"]  # the Trainer's own TensorBoard callback, same folder
    for name, values in expected_scalars(callback.history).items():
        assert close_to({e.step: e.value for e in events.Scalars(name)}, values), name
    assert {e.step: e.value for e in events.Scalars("deadrelu/net.1/dead_ratio")} == \
        pytest.approx({step: len(expected(step)) / 12 for step in (0, 4, 8, 12)})


# -- MLflow ---------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'deadrelu[mlflow]')")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants an opt-in for the file store
    mlflow.set_tracking_uri("file:" + str(tmp_path / "mlruns"))
    yield mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()


def test_monitor_logs_to_a_new_mlflow_run(mlflow_store) -> None:
    from mlflow.tracking import MlflowClient
    monitor = run_monitor(mlflow=True)
    assert mlflow_store.active_run() is None  # the run it started is ended at close
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert run.info.status == "FINISHED"
    for name, values in expected_scalars(monitor.history).items():
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
        assert got == pytest.approx(values), name
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "deadrelu/heat_map")]
    assert artifacts == ["deadrelu/heat_map/step_000000020.png"]


def test_scan_logs_to_the_active_mlflow_run_with_reports(mlflow_store, files) -> None:
    from mlflow.tracking import MlflowClient

    model = deadrelu.load_model(files["model"], arch=f"{files['arch']}:build").module
    result = deadrelu.scan(model, np.load(files["data"]))
    with mlflow_store.start_run() as run:
        log_scan(result, step=3, mlflow=True)
        assert mlflow_store.active_run().info.run_id == run.info.run_id  # the user's run is left open
    client = MlflowClient()
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "deadrelu/dead_ratio")] == [(3, 0.25)]
    paths = sorted(a.path for a in client.list_artifacts(run.info.run_id, "deadrelu"))
    assert paths == ["deadrelu/heat_map", "deadrelu/report.html", "deadrelu/result.json"]
    saved = json.loads(Path(client.download_artifacts(run.info.run_id, "deadrelu/result.json")).read_text())
    assert sum(site["dead"] for site in saved["sites"]) == 8


# -- Weights & Biases -------------------------------------------------------------------------------


def wandb_history(run_folder: Path) -> list[dict] | None:
    """The history rows of an offline run, read from its ``run-*.wandb`` file (a LevelDB-style
    log of protobuf records: 7-byte file header, 32 KiB blocks, 7-byte chunk headers); None
    until the run's exit record is written."""
    from wandb.proto import wandb_internal_pb2
    data = next(run_folder.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    position, pending, rows, ended = 7, b"", [], False
    while position + 7 <= len(data):
        block_left = 32768 - position % 32768
        if block_left < 7:  # a block's tail too short for a header is padding
            position += block_left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += block_left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                row: dict = {}
                for item in record.history.item:  # a logged object's fields come as nested keys
                    *outer, last = [item.key] if item.key else list(item.nested_key)
                    target = row
                    for key in outer:
                        target = target.setdefault(key, {})
                    target[last] = json.loads(item.value_json)
                rows.append(row)
            ended = ended or record.WhichOneof("record_type") == "exit"
    return rows if ended else None


def test_monitor_logs_to_wandb_offline(tmp_path: Path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install 'deadrelu[wandb]')")
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path)), ("WANDB_SILENT", "true"),
                        ("WANDB_DISABLE_GIT", "true"), ("WANDB_CONSOLE", "off")):
        monkeypatch.setenv(name, value)
    monitor = run_monitor(wandb=True)
    assert wandb.run is None  # the run it started is finished at close
    (folder,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    deadline = time.monotonic() + 20
    while (rows := wandb_history(Path(folder))) is None and time.monotonic() < deadline:
        time.sleep(0.2)  # wandb-core may still be writing the file when finish() returns
    assert rows is not None
    by_step = {row["_step"]: row for row in rows}
    assert sorted(by_step) == list(range(0, STEPS, EVERY))
    for name, values in expected_scalars(monitor.history).items():
        assert {step: row[name] for step, row in by_step.items()} == pytest.approx(values), name
    table = by_step[8]["deadrelu/sites"]
    assert table["_type"] == "table-file" and table["nrows"] == 2
    saved = json.loads((Path(folder) / "files" / table["path"]).read_text())
    sites = [dict(zip(saved["columns"], row)) for row in saved["data"]]
    at_8 = monitor.history[monitor.history["step"] == 8]
    assert [(s["site"], s["tag"], s["dead"], s["newly_dead"]) for s in sites] == \
        [(row.site, row.site, row.dead, row.newly_dead) for row in at_8.itertuples()]
    assert by_step[20]["deadrelu/heat_map"]["_type"] == "image-file"
    assert by_step[8]["deadrelu/1/active_rate"]["_type"] == "histogram"


def test_an_mlflow_store_it_cannot_use_is_a_config_error(mlflow_store) -> None:
    mlflow_store.set_tracking_uri("nosuchscheme://here")
    with pytest.raises(ConfigError, match="MLflow cannot start a run at nosuchscheme://here") as caught:
        deadrelu.Monitor(make_model(), probe=bounded(8), mlflow=True)
    assert "MLFLOW_TRACKING_URI" in caught.value.hint
