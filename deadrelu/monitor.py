"""Watch units die while a model trains: ``deadrelu.Monitor``.

    monitor = deadrelu.Monitor(model, probe=probe_batches, every=500, log="runs/exp1/deadrelu.jsonl")
    for step, batch in enumerate(loader):
        ...                       # forward, backward, optimizer step
        monitor.step(step)        # at step % every == 0 (step 0 too): scan the probe, append a record
    monitor.close()
    monitor.history               # pandas DataFrame, one row per (step, site)

Two ways to measure:

* **probe mode** (``probe=``): a fixed data set is scanned with ``deadrelu.scan`` (eval
  mode, ``inference_mode``), so steps are comparable. Every module's train/eval flag
  (restored by the capture) and the RNG state (torch CPU and CUDA, numpy, ``random``)
  are as before afterwards, and no hook stays on the model between scans.
* **window mode** (``window=K``, no probe): the statistics come from the training
  forward passes of the K steps starting at each multiple of ``every``; no extra
  forward pass, train mode kept (dropout on, BatchNorm in batch statistics), hooks
  only during the window, reductions under ``no_grad``.

Each scan is one JSON line in ``log`` (flushed and synced as it is written, so a
crashed run keeps what it logged; an existing log is read and appended to, so a
resumed run continues it).

**Recycling during training** (``recycle="dead"`` or ``"dormant"``, ReDo's schedule): right
after each scan the flagged units are recycled in place with ``deadrelu.recycle`` (new
incoming weights, outgoing weights 0, the optimizer's moments of those rows and columns
reset when ``optimizer`` is given), checked on the probe where there is one, with the
random number generators put back afterwards. The record says how many units were recycled
at each site (``history``'s ``recycled`` column) or why the recycle was refused.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .capturing.session import CaptureSession
from .errors import CaptureError, ConfigError, OutputError
from .history import Mode, history_frame, read_log, record_from_result
from .load.model import unwrap
from .load.sources import feeding_for, open_data
from .load.spec import Inputs
from .result import ScanResult, _json_clean
from .scanning import scan
from .settings import ScanSettings, build_settings


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Put the random number generators back as they were (torch CPU and CUDA, numpy, random)."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


class Monitor:
    """Scan a model every ``every`` training steps and keep the history of dead units.

    Args:
        model: the model being trained (DataParallel/DDP/``torch.compile`` wrappers are unwrapped).
        probe: a fixed data set (tensor, array, dict, Dataset, DataLoader, data file path)
            scanned in eval mode at each multiple of ``every``. Must be re-iterable.
        every: scan at steps that are multiples of this (step 0 too).
        log: JSONL file to append one record per scan to (None: keep records in memory only).
        window: without a probe: measure on the training forward passes of this many
            steps from each multiple of ``every`` (at most ``every``).
        input_key: which entry of dict probe batches is the model input.
        input_fn: maps a raw probe batch to the model's inputs (see ``deadrelu.scan``).
        scale: multiply probe inputs by this.
        recycle: ``"dead"`` or ``"dormant"``: recycle those units (ReDo) after every scan.
        optimizer: with ``recycle``, the optimizer whose state of the recycled rows and
            columns is reset (Adam moments, momentum).
        atol: with ``recycle`` and a probe, the allowed output change of a recycle (relative to
            the largest output); a recycle beyond it is undone and recorded as refused.
        tensorboard: also write each record into this TensorBoard log folder (scalars, per-site
            active-rate histograms, the heat map every 10 records); ``deadrelu[tensorboard]``.
        mlflow: also log each record to the active MLflow run (or one started here); ``deadrelu[mlflow]``.
        wandb: also log each record to the active W&B run (or one started here); ``deadrelu[wandb]``.
        loggers: more ``deadrelu.loggers.Logger`` objects to feed each record to.
        **scan_settings: what ``deadrelu.scan`` takes, fed to the probe scans alike: the
            inputs' options (``deadrelu.Inputs``: ``kwargs``, ``mask``, ``key``,
            ``input_dtype``, ``tokenizer`` for a text probe...) and any scan setting
            (``tau``, ``dead_threshold``, ``batch_size``, ``layers``, ``granularity``...).
            The reduction is not compiled unless ``compile="on"`` is given. A dict probe
            holding ``input_ids`` feeds every entry as a keyword input, and its
            ``attention_mask`` keeps padding out of the statistics, as a tokenizer's batch does.

    Raises:
        ConfigError: neither or both of ``probe`` and ``window``, a one-shot iterator as
            probe, a bad ``every``/``window``, or a ``recycle`` other than dead/dormant.
    """

    def __init__(self, model: nn.Module, probe: Any = None, *, every: int = 500, log: str | Path | None = None,
                 window: int | None = None, input_key: str | Sequence[str] | None = None,
                 input_fn: Callable[[Any], Any] | None = None, scale: float | None = None,
                 recycle: str | None = None, optimizer: torch.optim.Optimizer | None = None, atol: float = 1e-5,
                 tensorboard: str | Path | None = None, mlflow: bool = False, wandb: bool = False,
                 loggers: Sequence[Any] = (), **scan_settings: Any) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"Monitor: every must be a positive number of steps, got {every!r}")
        if (probe is None) == (window is None):
            raise ConfigError("Monitor needs exactly one of probe= (a fixed data set scanned in eval mode) "
                              "and window=K (measure on K training steps' own forward passes)",
                              hint="deadrelu.Monitor(model, probe=x_probe, every=500) or "
                                   "deadrelu.Monitor(model, window=20, every=500)")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                                   or not 1 <= window <= every):
            raise ConfigError(f"Monitor: window must be a number of steps from 1 to every ({every}), got {window!r}",
                              hint="windows start at each multiple of every and must not overlap")
        if isinstance(probe, Iterator):
            raise ConfigError(f"Monitor: the probe is a one-shot iterator ({type(probe).__name__}); it is scanned "
                              "again at every multiple of every", hint="pass a tensor, an array, a Dataset or "
                                                                       "a DataLoader")
        if recycle is not None and recycle not in ("dead", "dormant"):
            raise ConfigError(f"Monitor: recycle must be 'dead' or 'dormant', got {recycle!r:.40}",
                              hint="deadrelu.Monitor(model, probe=x, every=50, recycle='dead', optimizer=opt)")
        if optimizer is not None and recycle is None:
            raise ConfigError("Monitor: optimizer= is for recycle= (its moments of recycled rows are reset)",
                              hint="add recycle='dead', or leave optimizer out")
        if recycle is not None:
            from .repair.verify import check_atol
            check_atol(atol)
        self.model = unwrap(model)
        self.every = every
        self.recycle = recycle
        self.optimizer = optimizer
        self._atol = atol
        # Recycled weights come from a stream of their own (seeded from the run's seed): the
        # training run's stream is put back after each recycle, and successive recycles still
        # draw new weights (restoring one shared state would redraw the same ones every time).
        self._recycle_rng = torch.Generator().manual_seed(torch.initial_seed() + 1).get_state()
        self.window = window
        input_options, settings = Inputs.split({"input_key": input_key, "input_fn": input_fn, "scale": scale,
                                                **scan_settings})
        self.settings: ScanSettings = build_settings(**{"compile": "off", **settings})
        self.mode = Mode.PROBE if probe is not None else Mode.WINDOW
        given = sorted(k for k, v in input_options.items() if v is not None)
        if probe is None and given:
            raise ConfigError(f"Monitor: {', '.join(given)} describe how the probe feeds the model; window mode "
                              "measures the training forward passes as they are", hint="pass probe= to use them")
        # The probe is opened once, as deadrelu.scan opens data; each probe scan feeds it alike.
        self._inputs = None if probe is None else _probe_inputs(self.model, probe, self.settings, input_options)
        self.log_path = None if log is None else Path(log)
        # A resumed run continues its log: earlier records stay part of the history.
        self._records: list[dict[str, Any]] = read_log(self.log_path) \
            if self.log_path is not None and self.log_path.exists() and self.log_path.stat().st_size else []
        self._handle: Any = None
        self._last_step: int | None = None
        self._closed = False
        self.last_result: ScanResult | None = None
        self._capture: CaptureSession | None = None
        self._window_start: int | None = None
        self._window_steps = 0
        from .loggers import open_loggers  # each library is imported only when asked for
        self.loggers = open_loggers(tensorboard=tensorboard, mlflow=mlflow, wandb=wandb, loggers=loggers)
        if self.mode == Mode.WINDOW:
            self._open_window()

    # -- the training loop's calls --------------------------------------------------------
    def step(self, step: int) -> dict[str, Any] | None:
        """Call once after every training step.

        Args:
            step: the step just finished (0, 1, 2...). A repeated step number (several
                micro-batches of one optimizer step) and a negative one only end the
                forward pass; they start no scan and count no window step.

        Returns:
            The record written at this step, or None.
        """
        if self._closed:
            raise ConfigError("Monitor.step() after close()", hint="make a new Monitor to keep monitoring")
        if self._capture is not None:
            self._capture_end_batch()  # every call ends a forward pass, also a repeated step's
        if step == self._last_step or step < 0:
            return None
        self._last_step = step
        if self.mode == Mode.PROBE:
            return self._probe_scan(step) if step % self.every == 0 else None
        record = None
        if self._capture is not None:
            if self._window_start is None:
                self._window_start = step
            self._window_steps += 1
            if self._window_steps >= (self.window or 1):
                record = self._close_window()
        if self._capture is None and (step + 1) % self.every == 0:
            self._open_window()  # the next step is a multiple of every: watch its forward pass
        return record

    def end_batch(self) -> None:
        """End one forward pass of a window (for loops that call submodules rather than the model)."""
        if self._capture is not None:
            self._capture_end_batch()

    def close(self) -> None:
        """Finish: a window with steps in it is logged, hooks are removed, the log is closed."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._capture is not None:
                if self._window_steps:
                    self._close_window()
                else:
                    self._discard_window()
        finally:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            self.loggers.close()  # the last heat map, then files and runs let go

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- what it found --------------------------------------------------------------------
    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record of this log, earlier runs' included, in the order written."""
        return list(self._records)

    @property
    def history(self) -> pd.DataFrame:
        """One row per (step, site): ``step, site, kind, units, dead, dead_ratio, saturated,
        dormant, active_rate_mean, newly_dead, revived``."""
        return history_frame(self._records)

    def __repr__(self) -> str:
        return (f"Monitor(mode={self.mode}, every={self.every}, records={len(self._records)}, "
                f"log={str(self.log_path) if self.log_path else None})")

    # -- probe mode -----------------------------------------------------------------------
    def _probe_scan(self, step: int) -> dict[str, Any]:
        assert self._inputs is not None
        # The scan restores every module's train/eval flag itself; a shuffling probe loader
        # or any other draw must not shift the training run's random stream.
        with preserved_rng():
            result = scan(self._inputs.with_values(model=self.model), settings=self.settings, progress=None)
        return self._append(result, step, None)

    # -- window mode ----------------------------------------------------------------------
    def _open_window(self) -> None:
        # eval_mode=False: the model keeps its mode; the session's root hooks make each call
        # of the model one batch, and eval-mode calls (validation) are not observed.
        session = CaptureSession(self.model, self.settings, eval_mode=False)
        session.__enter__()
        self._capture, self._window_start, self._window_steps = session, None, 0

    def _capture_end_batch(self) -> None:
        assert self._capture is not None
        if self._capture.in_batch:  # a batch opened by a submodule call, or one left open
            self._capture.end_batch()

    def _discard_window(self) -> None:
        session, self._capture = self._capture, None
        if session is not None:
            session.__exit__(None, None, None)

    def _close_window(self) -> dict[str, Any] | None:
        session = self._capture
        assert session is not None
        self._discard_window()  # hooks off first: building the result runs no forward pass
        start = self._window_start if self._window_start is not None else 0
        try:
            result = session.result(data_info={"source": "training forward passes (train mode)", "samples": None},
                                    suggestions=False)
        except CaptureError:
            warnings.warn(f"deadrelu.Monitor: no activation ran in train mode during the window at step {start}; "
                          "nothing logged", stacklevel=3)
            return None
        return self._append(result, start, self._window_steps)

    # -- recycling ------------------------------------------------------------------------
    def _recycle(self, result: ScanResult, record: dict[str, Any]) -> None:
        """ReDo right after a scan: recycle the flagged units in place and note it in the record."""
        from .repair import RepairRefused, recycle
        assert self.recycle is not None
        # Checked on the probe as the scan fed it; a window (or an input_fn) has no data to check on.
        probe = self._inputs
        data = probe.data if probe is not None and probe.input_fn is None else None
        refused: str | None = None
        # New weights (drawn on the CPU) come from the Monitor's own stream; the training run's
        # random stream stays as it was.
        with preserved_rng():
            torch.set_rng_state(self._recycle_rng)
            try:
                feeding: dict[str, Any] = {} if probe is None else {
                    "input_key": list(probe.input_key) or None, "scale": probe.scale, "kwargs": probe.kwargs,
                    "mask": probe.mask, "input_dtype": probe.input_dtype, "decoder_inputs": bool(probe.decoder_inputs)}
                report = recycle(self.model, result, self.recycle, optimizer=self.optimizer, data=data,
                                 atol=self._atol, rescan=False, **feeding)
            except RepairRefused as exc:
                report, refused = exc.report, exc.reason
                warnings.warn(f"deadrelu.Monitor: recycling at step {record['step']} was refused and undone: "
                              f"{refused}", stacklevel=4)
            finally:
                self._recycle_rng = torch.get_rng_state()
        counts = {} if refused else {change.site: len(change.changed) for change in report.sites}
        for site in record["sites"]:
            site["recycled"] = counts.get(site["name"], 0)
        record["recycle"] = {"units": self.recycle, "recycled": sum(counts.values()), "refused": refused,
                             "optimizer_state": [] if refused else list(report.optimizer_state),
                             "left_alone": {c.site: c.skipped for c in report.sites if c.skipped is not None}}

    # -- the log --------------------------------------------------------------------------
    def _append(self, result: ScanResult, step: int, window_steps: int | None) -> dict[str, Any]:
        record = record_from_result(result, step, self.mode, window_steps=window_steps)
        if self.recycle is not None:
            self._recycle(result, record)
        self._records.append(record)
        self.last_result = result
        if self.log_path is not None:
            self._write(record)
        self.loggers.log(self._records, result)
        return record

    def _write(self, record: dict[str, Any]) -> None:
        assert self.log_path is not None
        line = json.dumps(_json_clean(record), allow_nan=False) + "\n"
        try:
            if self._handle is None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                _drop_cut_line(self.log_path)
                self._handle = open(self.log_path, "a", encoding="utf-8")
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write the monitor log {self.log_path}: {exc.strerror or exc}",
                              hint="choose a log path in a folder you can write") from None


def _probe_inputs(model: nn.Module, probe: Any, settings: ScanSettings, options: dict[str, Any]) -> Inputs:
    """The probe opened as a stream (any data ``deadrelu.scan`` reads), with the feeding options."""
    inputs = Inputs(data=probe).with_values(**options)
    stream = open_data(inputs, batch_size=settings.batch_size, limit=settings.limit)
    feeding = feeding_for(inputs, model, stream)
    return Inputs(data=stream, input_key=feeding.input_key, kwargs=feeding.kwargs, mask=feeding.mask,
                  scale=feeding.scale, input_fn=feeding.input_fn, input_dtype=feeding.input_dtype,
                  decoder_inputs=feeding.decoder_inputs)


def _drop_cut_line(path: Path) -> None:
    """Cut off a last line a killed run left unfinished (no newline), so appending continues cleanly."""
    if not path.exists() or not path.stat().st_size:
        return
    with open(path, "r+b") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)
