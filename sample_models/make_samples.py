"""Regenerate the sample models (weights + scan data) with known problems.

    python sample_models/make_samples.py            # writes next to this file
    python sample_models/make_samples.py --out DIR  # writes into DIR instead

Deterministic (fixed seeds, one thread, deterministic CPU kernels) and quick (a few
seconds on a laptop CPU). Every model is trained briefly on synthetic data; then the
script measures what it meant to break with plain forward hooks, prints a per-layer
table and refuses to write if a measured share falls outside its intended range.

Outputs (see README.md in this folder):

    mlp_high_lr.pt          state_dict of archs.HighLrMLP       + mlp_data.npy        (2000, 20)
    mlp_high_lr_pickled.pt  the same model pickled whole (needs --allow-pickle)
    cnn_bn.pt               state_dict of archs.SmallCNN        + cnn_data.npy        (512, 1, 16, 16)
    elu_selu_saturated.pt   state_dict of archs.SaturatedELUNet + elu_selu_data.npy   (1000, 20)
    leaky_prelu.pt          state_dict of archs.LeakyPReLUNet   + leaky_prelu_data.npy (1000, 20)

The .pt state_dicts load with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import archs  # noqa: E402  (imported as top-level "archs" so the pickled model refers to archs.HighLrMLP)

SELU_FLOOR = -1.0507009873554805 * 1.6732632423543772  # -scale * alpha ~= -1.7581
ELU_FLOOR = -1.0                                      # -alpha for ELU(alpha=1)
NEAR_FLOOR = 0.01       # "at the floor": |out - floor| <= 1% of |floor|
SATURATED_SHARE = 0.99  # a unit is saturated if it is at the floor in >= 99% of samples


# --------------------------------------------------------------------------- helpers

def blobs(rng: np.random.Generator, n: int, d: int = 20, k: int = 4, spread: float = 1.0,
          scale: float = 1.0, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: k centres ~ N(0, spread), points = centre + N(0, 1), then * scale + offset."""
    centres = rng.normal(0.0, spread, (k, d))
    labels = rng.integers(0, k, n)
    x = (centres[labels] + rng.normal(0.0, 1.0, (n, d))) * scale + offset
    return x.astype(np.float32), labels.astype(np.int64)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
          epochs: int, batch: int, seed: int) -> float:
    """Plain minibatch training with a seeded shuffle; returns the last batch loss."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return float(loss.detach())


@torch.no_grad()
def capture(model: nn.Module, x: torch.Tensor, kinds: tuple[type, ...]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Run x through model; per activation module name -> (pre-activation, output).

    Uses a pre-hook to clone the input, so in-place ReLUs do not hide the pre-activation.
    """
    pre: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            handles.append(module.register_forward_pre_hook(
                lambda m, inp, name=name: pre.__setitem__(name, inp[0].detach().clone())))
            handles.append(module.register_forward_hook(
                lambda m, inp, o, name=name: out.__setitem__(name, o.detach().clone())))
    try:
        model.eval()
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (pre[name], out[name]) for name in out}


def per_unit(t: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (C, N * ...): one row per unit (feature or channel)."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def never_positive(t: torch.Tensor) -> torch.Tensor:
    return ~(per_unit(t) > 0).any(dim=1)


def saturated(out: torch.Tensor, floor: float) -> torch.Tensor:
    at_floor = (per_unit(out) - floor).abs() <= NEAR_FLOOR * abs(floor)
    return at_floor.float().mean(dim=1) >= SATURATED_SHARE


def pick(rng: np.random.Generator, n: int, k: int) -> torch.Tensor:
    return torch.from_numpy(np.sort(rng.choice(n, size=k, replace=False)))


@torch.no_grad()
def shove_below(linear: nn.Linear, x_in: torch.Tensor, units: torch.Tensor, quantile: float, margin: float) -> None:
    """Lower the bias of ``units`` so their pre-activation's ``quantile`` over x_in sits at -margin."""
    z = linear(x_in)[:, units]
    linear.bias[units] -= torch.quantile(z, quantile, dim=0) + margin


ROWS: list[tuple[str, ...]] = []


def row(model: str, layer: str, kind: str, units: int, **cells: str) -> None:
    ROWS.append((model, layer, kind, str(units), cells.get("dead", ""), cells.get("pre", ""),
                 cells.get("sat", ""), cells.get("note", "")))


def share(mask: torch.Tensor) -> str:
    return f"{int(mask.sum())}/{mask.numel()} ({100.0 * float(mask.float().mean()):.1f}%)"


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"make_samples: {what} -- refusing to write outputs that do not carry the intended problem")


# --------------------------------------------------------------------------- models

def make_mlp(seed: int = 1011, lr: float = 0.4, shove_every: int = 6) -> tuple[archs.HighLrMLP, np.ndarray]:
    """HighLrMLP: plain SGD at lr=0.4 (too high for this net) on un-centred inputs (offset +2).

    The oversized steps push many biases so far down that units never fire again. Which
    units die that way is chaotic, so to give the share a floor that does not hinge on float
    rounding, a seeded 1/6 of each hidden layer also gets a one-off bias shove after the
    first epoch (the kind of update a too-high learning rate makes). Dead units get no
    gradient, so both kinds stay dead through the remaining two epochs.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x_np, y_np = blobs(rng, 2000, offset=2.0)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    model = archs.HighLrMLP()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train(model, x, y, opt, epochs=1, batch=50, seed=seed + 1)
    shoved: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        h = x
        for i in range(0, len(model.net) - 1, 2):
            linear: nn.Linear = model.net[i]
            units = pick(rng, linear.out_features, linear.out_features // shove_every)
            shove_below(linear, h, units, quantile=1.0, margin=2.0)
            shoved[f"net.{i + 1}"] = units
            h = model.net[i + 1](linear(h))
    train(model, x, y, opt, epochs=2, batch=50, seed=seed + 2)
    acc = float((model(x).argmax(1) == y).float().mean())

    acts = capture(model, x, (nn.ReLU,))
    dead_all = []
    for name, (pre, out) in acts.items():
        dead = never_positive(out)
        dead_all.append(dead)
        n_shoved = int(dead[shoved[name]].sum())
        row("HighLrMLP", name, "ReLU", dead.numel(), dead=share(dead), pre=share(never_positive(pre)),
            note=f"{n_shoved} of {len(shoved[name])} shoved + {int(dead.sum()) - n_shoved} others died in training")
    total = torch.cat(dead_all)
    row("HighLrMLP", "(all)", "ReLU", total.numel(), dead=share(total), note=f"train acc {acc:.3f}")
    expect(0.20 <= float(total.float().mean()) <= 0.60, f"HighLrMLP dead share {share(total)} outside 20-60%")
    return model, x_np


def cnn_images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """16x16 one-channel images: class c < 5 is a horizontal bar at row 1+3c, c >= 5 a vertical
    bar at column 1+3(c-5); bar thickness 2, jittered by +-1 pixel, random brightness, noise."""
    labels = rng.integers(0, 10, n)
    img = rng.normal(0.0, 0.4, (n, 1, 16, 16))
    shift = rng.integers(-1, 2, n)
    bright = rng.uniform(1.0, 2.0, n)
    for i, (c, s, b) in enumerate(zip(labels, shift, bright)):
        pos = int(np.clip(1 + 3 * (c % 5) + s, 0, 14))
        if c < 5:
            img[i, 0, pos:pos + 2, :] += b
        else:
            img[i, 0, :, pos:pos + 2] += b
    return img.astype(np.float32), labels.astype(np.int64)


def make_cnn() -> tuple[archs.SmallCNN, np.ndarray]:
    """SmallCNN: a healthy Conv-BN-ReLU net, SGD+momentum, 3 epochs on 2048 images; scanned on 512 fresh ones."""
    rng = np.random.default_rng(2002)
    torch.manual_seed(2002)
    x_train, y_train = cnn_images(rng, 2048)
    x_np, y_np = cnn_images(rng, 512)
    model = archs.SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    train(model, torch.from_numpy(x_train), torch.from_numpy(y_train), opt, epochs=3, batch=64, seed=3)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    acc = float((model(x).argmax(1) == y).float().mean())
    acts = capture(model, x, (nn.ReLU,))
    dead_all = []
    for name, (pre, out) in acts.items():
        dead = never_positive(out)
        dead_all.append(dead)
        row("SmallCNN", name, "ReLU", dead.numel(), dead=share(dead), pre=share(never_positive(pre)),
            note="units = channels" if out.ndim == 4 else "")
    total = torch.cat(dead_all)
    row("SmallCNN", "(all)", "ReLU", total.numel(), dead=share(total), note=f"eval acc {acc:.3f}")
    expect(float(total.float().mean()) <= 0.25, f"SmallCNN should be healthy-ish, dead share {share(total)}")
    return model, x_np


def make_elu_selu() -> tuple[archs.SaturatedELUNet, np.ndarray]:
    """SaturatedELUNet: Adam on blobs; after one epoch a seeded 25% of ELU units and 20% of
    SELU units get their bias pushed far negative (every sample >= 6 below zero). Saturated
    units pass almost no gradient (exp(z)), so two more epochs leave them pinned at the floor.
    At the end 2 more units per layer are pushed so they sit at the floor on about 90% of
    samples only: near-misses for a 99% saturation threshold."""
    rng = np.random.default_rng(3003)
    torch.manual_seed(3003)
    x_np, y_np = blobs(rng, 1000, spread=1.5)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    model = archs.SaturatedELUNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, x, y, opt, epochs=1, batch=50, seed=4)
    hidden = model.fc1.out_features
    order1 = torch.from_numpy(rng.permutation(hidden))
    order2 = torch.from_numpy(rng.permutation(hidden))
    stuck1, near1 = order1[:hidden // 4].sort().values, order1[hidden // 4:hidden // 4 + 2].sort().values
    stuck2, near2 = order2[:hidden // 5].sort().values, order2[hidden // 5:hidden // 5 + 2].sort().values
    with torch.no_grad():
        shove_below(model.fc1, x, stuck1, quantile=1.0, margin=6.0)
        shove_below(model.fc2, model.elu(model.fc1(x)), stuck2, quantile=1.0, margin=6.0)
    train(model, x, y, opt, epochs=2, batch=50, seed=5)
    with torch.no_grad():
        # exp(-4.7) < 1%: the 90% quantile at -4.7 puts ~90% of samples within 1% of the floor.
        shove_below(model.fc1, x, near1, quantile=0.9, margin=4.7)
        shove_below(model.fc2, model.elu(model.fc1(x)), near2, quantile=0.9, margin=4.7)
    acc = float((model(x).argmax(1) == y).float().mean())
    acts = capture(model, x, (nn.ELU, nn.SELU))
    sat_all = []
    for name, (pre, out) in acts.items():
        floor = ELU_FLOOR if name == "elu" else SELU_FLOOR
        sat = saturated(out, floor)
        at_floor = ((per_unit(out) - floor).abs() <= NEAR_FLOOR * abs(floor)).float().mean(dim=1)
        near = int(((at_floor >= 0.8) & (at_floor < SATURATED_SHARE)).sum())
        sat_all.append(sat)
        row("SaturatedELUNet", name, "ELU" if name == "elu" else "SELU", sat.numel(),
            dead=share(never_positive(out)), pre=share(never_positive(pre)), sat=share(sat),
            note=f"floor {floor:.4f}; {near} unit(s) at floor in 80-99% of samples")
        expect(0.10 <= float(sat.float().mean()) <= 0.40, f"{name} saturated share {share(sat)} outside 10-40%")
    total = torch.cat(sat_all)
    row("SaturatedELUNet", "(all)", "ELU+SELU", total.numel(), sat=share(total), note=f"train acc {acc:.3f}")
    return model, x_np


def make_leaky_prelu() -> tuple[archs.LeakyPReLUNet, np.ndarray]:
    """LeakyPReLUNet: Adam on blobs, then
    - 8 LeakyReLU units get their bias pushed so the pre-activation is never > 0 (output never > 0);
    - 16 PReLU slopes are set to -0.5 (negative): those units' output is > 0 whenever the
      pre-activation is < 0;
    - 8 PReLU units get their pre-activation pushed below 0 on every sample: 4 of them have a
      negative slope (output > 0 on every sample although the pre-activation never is), 4 keep
      their positive slope (output never > 0)."""
    rng = np.random.default_rng(4004)
    torch.manual_seed(4004)
    x_np, y_np = blobs(rng, 1000, spread=1.5)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    model = archs.LeakyPReLUNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, x, y, opt, epochs=3, batch=50, seed=6)
    hidden = model.fc1.out_features
    with torch.no_grad():
        leaky_dead = pick(rng, hidden, 8)
        shove_below(model.fc1, x, leaky_dead, quantile=1.0, margin=1.0)
        order = torch.from_numpy(rng.permutation(hidden))
        negative = order[:16].sort().values
        pre_dead = torch.cat([order[:4], order[16:20]]).sort().values  # 4 negative-slope, 4 positive-slope
        model.prelu.weight[negative] = -0.5
        shove_below(model.fc2, model.leaky(model.fc1(x)), pre_dead, quantile=1.0, margin=1.0)
    acc = float((model(x).argmax(1) == y).float().mean())
    acts = capture(model, x, (nn.LeakyReLU, nn.PReLU))
    pre, out = acts["leaky"]
    row("LeakyPReLUNet", "leaky", "LeakyReLU(0.1)", hidden, dead=share(never_positive(out)),
        pre=share(never_positive(pre)))
    expect(int(never_positive(pre).sum()) >= 8, "LeakyReLU units not pushed below zero")
    pre, out = acts["prelu"]
    neg = model.prelu.weight < 0
    pre_dead_mask, out_dead_mask = never_positive(pre), never_positive(out)
    always_on = (per_unit(out) > 0).all(dim=1)
    row("LeakyPReLUNet", "prelu", "PReLU", hidden, dead=share(out_dead_mask), pre=share(pre_dead_mask),
        note=f"{int(neg.sum())} negative slopes; {int((pre_dead_mask & always_on).sum())} unit(s) with "
             f"pre-act never > 0 but output > 0 on every sample; train acc {acc:.3f}")
    expect(int((pre_dead_mask & neg & always_on).sum()) >= 4, "negative-slope PReLU units do not show the difference")
    return model, x_np


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: next to this script)")
    args = parser.parse_args(argv)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, immune to busy CPUs, and fixes the reduction order
    torch.use_deterministic_algorithms(True)

    mlp, mlp_x = make_mlp()
    cnn, cnn_x = make_cnn()
    elu, elu_x = make_elu_selu()
    leaky, leaky_x = make_leaky_prelu()

    outputs = {
        "mlp_high_lr.pt": mlp.state_dict(),
        "cnn_bn.pt": cnn.state_dict(),
        "elu_selu_saturated.pt": elu.state_dict(),
        "leaky_prelu.pt": leaky.state_dict(),
    }
    for name, state in outputs.items():
        torch.save(state, out_dir / name)
    torch.save(mlp, out_dir / "mlp_high_lr_pickled.pt")  # whole module: loads only with weights_only=False
    for name, array in [("mlp_data.npy", mlp_x), ("cnn_data.npy", cnn_x),
                        ("elu_selu_data.npy", elu_x), ("leaky_prelu_data.npy", leaky_x)]:
        np.save(out_dir / name, np.ascontiguousarray(array, dtype=np.float32))

    header = ("model", "layer", "kind", "units", "dead (out never > 0)", "pre-act never > 0", "saturated", "note")
    widths = [max(len(r[i]) for r in [header, *ROWS]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in ROWS:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print()
    for path in sorted(out_dir.glob("*.pt")) + sorted(out_dir.glob("*.npy")):
        print(f"wrote {path.name:26s} {path.stat().st_size:>8d} bytes")
    print(f"done in {time.perf_counter() - started:.1f} s (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
