"""The framework callbacks in real two-epoch fits: PyTorch Lightning and transformers.Trainer.

A tiny regression model has 2 units of its first ReLU dead from the start (bias -100,
weights zeroed: dead for any input) and one more (unit 9) killed at the start of
optimizer step 6 with bias -100 alone: dead on the bounded training data, but
validation inputs of size 1e4 would wake it, which shows whether eval-mode passes
were counted. 64 samples, batches of 8: steps 0..15 over two epochs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deadrelu.history import read_log
from truth_models import bounded_inputs

KILL_STEP = 6
DEAD_FROM_START, KILLED = [0, 1], 9


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 1))
    with torch.no_grad():
        net[0].bias.fill_(5.0)
        net[0].weight[DEAD_FROM_START] = 0.0
        net[0].bias[DEAD_FROM_START] = -100.0
    return net


def kill_if_due(net: nn.Sequential, step: int) -> None:
    if step == KILL_STEP:
        with torch.no_grad():
            net[0].bias[KILLED] = -100.0


def expected(step: int) -> list[int]:
    return DEAD_FROM_START + ([KILLED] if step >= KILL_STEP else [])


X = bounded_inputs(64, 4, seed=1)
Y = X.sum(dim=1, keepdim=True)
PROBE = bounded_inputs(40, 4, seed=2)


def dead_by_step(log: Path) -> dict[int, list[int]]:
    return {r["step"]: r["sites"][0]["dead_units"] for r in read_log(log)}


# -- Lightning ----------------------------------------------------------------------------------

def _lightning():
    return pytest.importorskip("lightning.pytorch", reason="PyTorch Lightning is not installed "
                                                           "(pip install 'deadrelu[lightning]')")


def make_module(L):
    class Regressor(L.LightningModule):
        """Calls self.net(x) in training_step, bypassing the module's own forward hooks."""

        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()

        def training_step(self, batch, batch_idx):
            kill_if_due(self.net, self.global_step)
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x * 1e4), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-4)

    return Regressor()


def fit_lightning(L, callback, tmp_path: Path, logger=False) -> None:
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=logger, callbacks=[callback],
                        enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0)
    trainer.fit(make_module(L), DataLoader(TensorDataset(X, Y), batch_size=8),
                DataLoader(TensorDataset(X, Y), batch_size=32))
    assert trainer.global_step == 16


def test_lightning_probe_mode_logs_to_the_lightning_logger(tmp_path: Path) -> None:
    L = _lightning()
    from lightning.pytorch.loggers import CSVLogger

    from deadrelu.integrations.lightning import DeadReluCallback
    log = tmp_path / "deadrelu.jsonl"
    callback = DeadReluCallback(probe=PROBE, every=4, log=log, module="net")  # Regressor has no forward()
    fit_lightning(L, callback, tmp_path, logger=CSVLogger(tmp_path, name="csv"))
    assert dead_by_step(log) == {step: expected(step) for step in (0, 4, 8, 12)}
    assert list(callback.history["dead"]) == [2, 2, 3, 3]
    import pandas as pd
    metrics = pd.read_csv(next((tmp_path / "csv").rglob("metrics.csv")))
    logged = metrics.dropna(subset=["deadrelu/dead"]).set_index("step")
    assert logged["deadrelu/dead"].to_dict() == {0: 2.0, 4: 2.0, 8: 3.0, 12: 3.0}
    assert logged["deadrelu/1/dead_ratio"].to_dict()[8] == pytest.approx(3 / 12)


def test_lightning_probe_needs_a_forward_or_a_module(tmp_path: Path) -> None:
    L = _lightning()
    from deadrelu.errors import ConfigError
    from deadrelu.integrations.lightning import DeadReluCallback
    with pytest.raises(ConfigError, match="Regressor has no forward"):
        fit_lightning(L, DeadReluCallback(probe=PROBE, every=4), tmp_path)


def test_lightning_window_mode_skips_validation_passes(tmp_path: Path) -> None:
    L = _lightning()
    from deadrelu.integrations.lightning import DeadReluCallback
    log = tmp_path / "deadrelu.jsonl"
    callback = DeadReluCallback(window=4, every=4, log=log)  # windows cover every step, validation included
    fit_lightning(L, callback, tmp_path)
    records = read_log(log)
    assert [r["step"] for r in records] == [0, 4, 8, 12]
    assert all(r["train_mode"] and r["window_steps"] == 4 for r in records)
    # Unit 9 is killed at step 6: alive in the window 4-7, dead from 8 on, although the
    # validation pass after step 7 (inside window 8-11, inputs x 1e4) wakes it.
    assert dead_by_step(log) == {0: [0, 1], 4: [0, 1], 8: [0, 1, 9], 12: [0, 1, 9]}
    assert [s["name"] for s in records[0]["sites"]] == ["net.1"]


# -- transformers -----------------------------------------------------------------------------

class HFRegressor(nn.Module):
    """A plain module as the Trainer takes it: keyword inputs, a dict with the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()
        self.steps = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        output = self.net(x)
        return {"loss": nn.functional.mse_loss(output, labels) if labels is not None else None, "logits": output}



def fit_hf(callback, tmp_path: Path, report_to: list[str] | None = None):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                                              "(pip install 'deadrelu[hf]')")

    class Killer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            kill_if_due(model.net, state.global_step)

    dataset = [{"x": X[k], "labels": Y[k]} for k in range(len(X))]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-4,
        logging_steps=4, save_strategy="no", report_to=report_to or [], use_cpu=True, disable_tqdm=True,
        remove_unused_columns=False, lr_scheduler_type="constant", optim="sgd", seed=0)
    model = HFRegressor()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Killer(), callback])
    trainer.train()
    assert trainer.state.global_step == 16
    return trainer


def test_transformers_probe_mode(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="transformers is not installed (pip install 'deadrelu[hf]')")
    from deadrelu.integrations.transformers import DeadReluCallback
    log = tmp_path / "deadrelu.jsonl"
    callback = DeadReluCallback(probe=PROBE, every=4, log=log)
    trainer = fit_hf(callback, tmp_path)
    assert dead_by_step(log) == {step: expected(step) for step in (0, 4, 8, 12)}
    scans = [entry for entry in trainer.state.log_history if "deadrelu/dead" in entry]
    assert [(entry["step"], entry["deadrelu/dead"]) for entry in scans[:4]] == [(0, 2.0), (4, 2.0), (8, 3.0),
                                                                                (12, 3.0)]
    assert all(m.training for m in trainer.model.modules())


def test_transformers_window_mode(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="transformers is not installed (pip install 'deadrelu[hf]')")
    from deadrelu.integrations.transformers import DeadReluCallback
    log = tmp_path / "deadrelu.jsonl"
    trainer = fit_hf(DeadReluCallback(window=2, every=4, log=log), tmp_path)
    records = read_log(log)
    assert [(r["step"], r["window_steps"], r["train_mode"]) for r in records] == [(0, 2, True), (4, 2, True),
                                                                                 (8, 2, True), (12, 2, True)]
    assert dead_by_step(log) == {0: [0, 1], 4: [0, 1], 8: [0, 1, 9], 12: [0, 1, 9]}
    assert [s["name"] for s in records[0]["sites"]] == ["net.1"]
    model = trainer.model
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -- optional stays optional --------------------------------------------------------------------

def test_import_deadrelu_imports_no_framework() -> None:
    import subprocess
    # a Monitor without loggers imports no logging library either
    code = ("import sys, torch, deadrelu, deadrelu.cli, deadrelu.monitor; "
            "deadrelu.Monitor(torch.nn.ReLU(), probe=torch.ones(2, 3), every=1).step(0); "
            "print(any(m.split('.')[0] in ('lightning', 'pytorch_lightning', 'transformers', 'tensorboard', "
            "'mlflow', 'wandb') or m == 'torch.utils.tensorboard' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("module", "blocked", "extra"), [
    ("deadrelu.integrations.lightning", ("lightning", "lightning.pytorch", "pytorch_lightning"), "lightning"),
    ("deadrelu.integrations.transformers", ("transformers",), "hf")])
def test_missing_framework_names_the_extra(monkeypatch, module: str, blocked: tuple[str, ...], extra: str) -> None:
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # import of it now fails
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError) as caught:
        importlib.import_module(module)
    assert str(caught.value).endswith(f"pip install 'deadrelu[{extra}]'")
    assert "\n" not in str(caught.value)
