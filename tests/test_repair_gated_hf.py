"""Gated MLPs (SwiGLU / ReGLU products) are pruned and recycled exactly, and repaired Hugging Face
models are written in forms that load back: a ``.pt2`` that returns tensors, a ``save_pretrained``
folder.

Truth: ``GatedMLP`` has product units 2, 5, 7 exactly 0 (zero ``up`` rows, or a ReLU gate at
bias -100); the tiny Llama has layer 0's product units 1, 4, 9 exactly 0 (zero ``up_proj`` rows);
the tiny OPT has 7 dead units in layer 0 (fc1 bias -1000).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import deadrelu
from deadrelu.cli import app
from repair_models import GATED_DEAD, GatedMLP, inputs, llama_with_dead_products

KEEP = [i for i in range(12) if i not in GATED_DEAD]


def _scan(model: torch.nn.Module, data: torch.Tensor) -> deadrelu.ScanResult:
    return deadrelu.scan(model, data, device="cpu", batch_size=64)


# -- a hand-built gated MLP --------------------------------------------------------------------------

def test_prune_gated_mlp_removes_gate_row_up_row_and_down_column_together() -> None:
    model, x = GatedMLP().eval(), inputs()
    result = _scan(model, x)
    assert {s.name: (s.kind, tuple(s.verdict.dead_units)) for s in result.sites} == {
        "act": ("SiLU", ()), "<root>:swiglu#0": ("SwiGLU", GATED_DEAD)}
    pruned, report = deadrelu.prune(model, result, x)
    assert {k: tuple(v.shape) for k, v in pruned.state_dict().items()} == {
        "gate.weight": (9, 10), "gate.bias": (9,), "up.weight": (9, 10), "up.bias": (9,), "down.weight": (3, 9),
        "down.bias": (3,)}
    (change,) = report.sites
    assert (change.site, change.changed, change.producer, change.partners, change.consumers) == \
        ("<root>:swiglu#0", GATED_DEAD, "gate", ("up",), ("down",))
    assert torch.equal(pruned.up.weight, model.up.weight[KEEP]) and torch.equal(pruned.down.weight,
                                                                                 model.down.weight[:, KEEP])
    assert report.check is not None and report.check.max_abs_diff <= 1e-6 * report.check.output_scale
    assert [(d.site, d.units_after, d.dead_after) for d in report.effect.deltas] == [("act", 9, 0),
                                                                                     ("<root>:swiglu#0", 9, 0)]


def test_a_relu_gate_is_left_to_its_product_site() -> None:
    model, x = GatedMLP(relu_gate=True).eval(), inputs()
    result = _scan(model, x)
    assert {s.name: tuple(s.verdict.dead_units) for s in result.sites} == {"act": GATED_DEAD,
                                                                          "<root>:reglu#0": GATED_DEAD}
    pruned, report = deadrelu.prune(model, result, x)
    by_site = {c.site: c for c in report.sites}
    assert by_site["act"].changed == () and by_site["act"].skipped == \
        "its units gate the product <root>:reglu#0; that site takes gate, up and down together"
    assert by_site["<root>:reglu#0"].changed == GATED_DEAD
    assert tuple(pruned.gate.weight.shape) == tuple(pruned.up.weight.shape) == (9, 10)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=1e-6)


def test_recycle_gated_mlp_renews_gate_and_up_rows_and_zeroes_down_columns() -> None:
    model, x = GatedMLP().eval(), inputs()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for param in model.parameters():  # a history in every slot (a step would revive the zero up rows)
        optimizer.state[param] = {"step": torch.tensor(1.0), "exp_avg": torch.ones_like(param),
                                  "exp_avg_sq": torch.ones_like(param)}
    with torch.no_grad():
        expected = model(x)
    report = deadrelu.recycle(model, _scan(model, x), "dead", optimizer=optimizer, data=x)
    (change,) = [c for c in report.sites if c.changed]
    assert change.partners == ("up",) and report.recycled == 3 and report.check.max_abs_diff == 0.0
    dead = list(GATED_DEAD)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    assert torch.all(model.gate.bias[dead] == 0) and torch.all(model.up.bias[dead] == 0)
    assert torch.all(model.up.weight[dead].abs().sum(1) > 0)  # the zero up rows start afresh
    assert torch.all(model.down.weight[:, dead] == 0)
    assert report.fired == (3, 3)
    for param, dim in ((model.gate.weight, 0), (model.up.weight, 0), (model.up.bias, 0), (model.down.weight, 1)):
        moment = optimizer.state[param]["exp_avg"]
        assert torch.all(moment.index_select(dim, torch.tensor(dead)) == 0)
        assert torch.all(moment.index_select(dim, torch.tensor(KEEP)) == 1)
    assert set(report.optimizer_state) == {"gate.weight", "gate.bias", "up.weight", "up.bias", "down.weight"}


# -- Hugging Face models -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("transformers")
    from lm_fixtures import save_model_folder, save_text, save_tokenizer
    root = tmp_path_factory.mktemp("hf")
    llama_dir = root / "llama"
    llama_with_dead_products().save_pretrained(str(llama_dir))
    save_tokenizer(llama_dir)
    tokens = root / "tokens.npy"
    np.save(tokens, np.random.default_rng(0).integers(7, 38, (12, 8)).astype(np.int64))
    return {"opt": save_model_folder(root / "opt", "opt"), "llama": llama_dir, "tokens": tokens,
            "text": save_text(root / "text.txt")}


def _ids(hf: dict[str, Path]) -> torch.Tensor:
    return torch.from_numpy(np.load(hf["tokens"]))


def _scan_json(runner, *args: str) -> dict:
    run = runner.invoke(app, ["scan", *args, "--json", "-"])
    assert run.exit_code == 0, run.output
    return json.loads(run.stdout)


def test_prune_and_recycle_a_tiny_llama_with_dead_products(hf) -> None:
    model, ids = llama_with_dead_products(), _ids(hf)
    result = _scan(model, ids)
    assert {s.name: s.verdict.dead_units for s in result.sites if s.dead} == {"layers.0.mlp:swiglu#0": [1, 4, 9]}
    pruned, report = deadrelu.prune(model, result, ids)
    assert report.graph == "export" and report.removed == 3
    assert [(name, after) for name, _before, after in report.shapes] == [
        ("layers.0.mlp.gate_proj.weight", (29, 16)), ("layers.0.mlp.up_proj.weight", (29, 16)),
        ("layers.0.mlp.down_proj.weight", (16, 29))]
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).last_hidden_state, model(ids).last_hidden_state, rtol=0, atol=1e-5)
    recycled = llama_with_dead_products()
    report = deadrelu.recycle(recycled, result, "dead", data=ids)
    assert report.recycled == 3 and report.check is not None and report.check.max_abs_diff == 0.0
    assert report.fired == (3, 3) and report.sites[0].partners == ("layers.0.mlp.up_proj",)


def test_cli_prune_llama_folder_writes_a_program_that_loads_back(runner, hf, tmp_path: Path) -> None:
    out = tmp_path / "llama.pt2"
    run = runner.invoke(app, ["prune", str(hf["llama"]), str(hf["tokens"]), "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert "pruned 3 dead unit(s) at 1 site(s)" in run.output and "layers.0.mlp.gate_proj + layers.0.mlp.up_proj" \
        in run.output
    ids = _ids(hf)
    program = torch.export.load(str(out)).module()
    with torch.no_grad():
        torch.testing.assert_close(program(ids), llama_with_dead_products()(ids).last_hidden_state, rtol=0,
                                   atol=1e-5)
    # A scan of the program sees the gate activations and, at the aten level too, their products, named as
    # an eager scan names them; the pruned product has 29 units left.
    sites = {s["name"]: s["units"] for s in _scan_json(runner, str(out), str(hf["tokens"]))["sites"]}
    assert sites == {"layers.0.mlp.act_fn": 29, "layers.0.mlp:swiglu#0": 29, "layers.1.mlp.act_fn": 32,
                     "layers.1.mlp:swiglu#0": 32}


def test_cli_prune_opt_folder_program_loads_back_with_torch_and_deadrelu(runner, hf, tmp_path: Path) -> None:
    from lm_fixtures import opt
    ids, out = _ids(hf), tmp_path / "opt.pt2"
    run = runner.invoke(app, ["prune", str(hf["opt"]), str(hf["tokens"]), "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert "returns tensors" in run.output
    program = torch.export.load(str(out)).module()
    with torch.no_grad():
        torch.testing.assert_close(program(ids), opt()(ids).last_hidden_state, rtol=0, atol=1e-5)
        assert program(ids[:3]).shape == (3, 8, 16)  # any batch size
    report = _scan_json(runner, str(out), str(hf["tokens"]))
    layer0 = next(s for s in report["sites"] if s["name"] == "decoder.layers.0.activation_fn")
    assert (layer0["units"], layer0["dead"]) == (25, 0)
    # Text (input_ids= and attention_mask=): a program for those shapes, loadable by both too.
    text_out = tmp_path / "opt_text.pt2"
    run = runner.invoke(app, ["prune", str(hf["opt"]), str(hf["text"]), "--out", str(text_out)])
    assert run.exit_code == 0, run.output
    # the "wrote" line wraps at spaces to the terminal's width (issue 22): read it with whitespace collapsed
    assert "inputs of exactly these shapes: input_ids= (8, 7), attention_mask= (8, 7)" in " ".join(run.output.split())
    # The check compared all 8 examples, fed as input_ids= (keyword inputs): it says 8, not 1 per batch.
    assert "outputs unchanged on 8 samples" in " ".join(run.output.split())
    report = _scan_json(runner, str(text_out), str(hf["text"]), "--tokenizer", str(hf["opt"]))
    assert report["summary"]["units"] == 25 + 32 and report["summary"]["dead"] == 0


def test_cli_fix_recycle_opt_folder_writes_a_folder_that_loads_back(runner, hf, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from lm_fixtures import opt
    out = tmp_path / "opt-recycled"
    run = runner.invoke(app, ["fix", str(hf["opt"]), str(hf["text"]), "--recycle", "dead", "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert f"wrote {out}/ (Hugging Face folder, with the tokenizer" in " ".join(run.output.split())  # wraps at spaces
    written = transformers.AutoModel.from_pretrained(str(out), local_files_only=True).eval()
    ids = _ids(hf)
    with torch.no_grad():
        assert torch.equal(written(ids).last_hidden_state, opt()(ids).last_hidden_state)
    assert not torch.equal(written.decoder.layers[0].fc1.weight, opt().decoder.layers[0].fc1.weight)
    report = _scan_json(runner, str(out), str(hf["text"]))  # the folder's own tokenizer
    assert report["summary"]["dead"] == 0
    # A state_dict needs its suffix; a swap changes the architecture, which a folder cannot hold.
    run = runner.invoke(app, ["fix", str(hf["opt"]), str(hf["text"]), "--recycle", "dead", "--out",
                              str(tmp_path / "w.safetensors")])
    assert run.exit_code == 0 and (tmp_path / "w.safetensors").is_file(), run.output
    run = runner.invoke(app, ["fix", str(hf["opt"]), str(hf["text"]), "--swap-activation", "elu", "--out",
                              str(tmp_path / "swapped")])
    assert run.exit_code == 2 and "a Hugging Face folder cannot hold" in run.output and "swapped.pt2" in run.output


def test_fix_out_without_a_suffix_is_refused_for_a_file_model(runner, tmp_path: Path) -> None:
    from repair_models import DeadMLP
    model_path, data_path = tmp_path / "mlp.pt", tmp_path / "x.npy"
    torch.save(DeadMLP().state_dict(), model_path)
    np.save(data_path, inputs().numpy())
    run = runner.invoke(app, ["fix", str(model_path), str(data_path), "--arch",
                              f"{Path(__file__).parent / 'repair_models.py'}:DeadMLP", "--recycle", "dead", "--out",
                              str(tmp_path / "recycled")])
    assert run.exit_code == 2 and "name the file with its format" in run.output
    assert not (tmp_path / "recycled").exists()
