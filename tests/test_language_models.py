"""Language models end to end: Hugging Face folders scanned on a text file from the command line,
padding left out by the attention mask, token ids kept as integers in every model format.

The Hugging Face tests build tiny random-config models with ``save_pretrained`` and a word-level
tokenizer (``tests/lm_fixtures.py``); they are skipped when transformers is not installed
(``pip install 'deadrelu[hf]'``).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.cli import app
from deadrelu.schema import validate_result

from lm_fixtures import TEXT_LINES, real_tokens, save_model_folder, save_text

transformers = pytest.importorskip("transformers", reason="transformers is not installed: pip install 'deadrelu[hf]'")
pytest.importorskip("tokenizers", reason="tokenizers is not installed: pip install 'deadrelu[hf]'")

#: tokens of TEXT_LINES (no special tokens are added by the word-level tokenizer)
REAL_TOKENS = real_tokens()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    made = {name: save_model_folder(root / name, name) for name in ("opt", "bert", "gpt2", "t5", "llama")}
    made["text"] = save_text(root / "text.txt")
    return made


def scan_json(runner, *args) -> dict:
    done = runner.invoke(app, ["scan", *map(str, args), "--json", "-", "--quiet", "--batch-size", "3"])
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def sites_by_name(report: dict) -> dict[str, dict]:
    return {site["name"]: site for site in report["sites"]}


def test_opt_folder_on_text_finds_exactly_the_seven_killed_units(runner, folders):
    report = scan_json(runner, folders["opt"], folders["text"])
    sites = sites_by_name(report)
    assert list(sites) == ["decoder.layers.0.activation_fn", "decoder.layers.1.activation_fn"]
    first = sites["decoder.layers.0.activation_fn"]
    assert first["kind"] == "ReLU" and first["units"] == 32 and first["dead"] == 7
    assert first["dead_units"] == list(range(7))
    # OPT flattens tokens to (N*L, D) before fc1: the flattened mask leaves padding out.
    assert first["observations"] == REAL_TOKENS
    assert report["model"]["format"] == "huggingface"
    assert report["data"]["samples"] == len(TEXT_LINES) and report["data"]["mask"] == "attention_mask"
    assert report["coverage"]["mask_not_applied"] == []


def test_bert_gelu_sites_and_the_pooler_tanh_listed(runner, folders):
    report = scan_json(runner, folders["bert"], folders["text"])
    sites = sites_by_name(report)
    assert list(sites) == [f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in (0, 1)]
    assert all(site["kind"] == "GELU" and site["units"] == 32 and site["observations"] == REAL_TOKENS
               for site in sites.values())
    assert report["coverage"]["unsupported"] == [
        {"module": "pooler.activation", "class": "Tanh", "calls": 1, "reason": "unsupported kind"}]
    assert "1 Tanh call not scanned (unsupported kind) at module pooler.activation" in report["warnings"]
    validate_result(report, "bert report")  # the new coverage fields are part of the published schema


def test_gpt2_new_gelu_is_recognised_by_class_name(runner, folders):
    sites = sites_by_name(scan_json(runner, folders["gpt2"], folders["text"]))
    assert list(sites) == ["h.0.mlp.act", "h.1.mlp.act"]
    # NewGELUActivation computes the tanh formula by hand; its units sit on the last axis of Conv1D's output.
    assert all(site["kind"] == "GELU" and site["units"] == 64 and site["observations"] == REAL_TOKENS
               for site in sites.values())


def test_t5_relu_feed_forward_in_encoder_and_decoder(runner, folders):
    sites = sites_by_name(scan_json(runner, folders["t5"], folders["text"]))
    assert list(sites) == ["encoder.block.0.layer.1.DenseReluDense.act", "encoder.block.1.layer.1.DenseReluDense.act",
                           "decoder.block.0.layer.2.DenseReluDense.act", "decoder.block.1.layer.2.DenseReluDense.act"]
    assert all(site["kind"] == "ReLU" and site["units"] == 32 and site["observations"] == REAL_TOKENS
               for site in sites.values())


def test_llama_swiglu_gate_and_product(runner, folders):
    sites = sites_by_name(scan_json(runner, folders["llama"], folders["text"]))
    assert list(sites) == ["layers.0.mlp.act_fn", "layers.0.mlp:swiglu#0", "layers.1.mlp.act_fn",
                           "layers.1.mlp:swiglu#0"]
    assert [site["kind"] for site in sites.values()] == ["SiLU", "SwiGLU"] * 2
    assert all(site["units"] == 32 and site["observations"] == REAL_TOKENS for site in sites.values())


def test_hf_class_chooses_the_head_and_missing_weights_are_noted(runner, folders):
    report = scan_json(runner, folders["opt"], folders["text"], "--hf-class", "AutoModelForCausalLM")
    assert "loaded with transformers AutoModelForCausalLM as OPTForCausalLM" in report["warnings"]
    assert sites_by_name(report)["model.decoder.layers.0.activation_fn"]["dead"] == 7
    bad = runner.invoke(app, ["scan", str(folders["opt"]), str(folders["text"]), "--hf-class", "AutoNothing"])
    assert bad.exit_code == 2
    assert bad.stderr.splitlines()[0] == "error: --hf-class AutoNothing: transformers has no model class of that name"


def test_jsonl_text_field_and_max_length(runner, folders, tmp_path):
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"body": line}) + "\n" for line in TEXT_LINES), encoding="utf-8")
    report = scan_json(runner, folders["opt"], path, "--text-field", "body", "--max-length", "3")
    assert sites_by_name(report)["decoder.layers.0.activation_fn"]["observations"] == sum(
        min(3, len(line.split())) for line in TEXT_LINES)
    wrong = runner.invoke(app, ["scan", str(folders["opt"]), str(path)])
    assert wrong.exit_code == 2 and "no text field 'text' (it holds body)" in wrong.stderr


def test_text_without_a_tokenizer_and_remote_code_are_refused(runner, folders, tmp_path):
    model = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), model)
    done = runner.invoke(app, ["scan", str(model), str(folders["text"]), "--allow-pickle"])
    assert done.exit_code == 2 and "text data needs a tokenizer" in done.stderr and "--tokenizer DIR" in done.stderr
    remote = tmp_path / "remote"
    save_model_folder(remote, "opt")
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_mine.MineModel"}
    config["model_type"] = "mine-unknown"
    (remote / "config.json").write_text(json.dumps(config))
    done = runner.invoke(app, ["scan", str(remote), str(folders["text"])])
    assert done.exit_code == 2 and "--allow-remote-code" in done.stderr


def test_missing_transformers_is_one_line(runner, folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    done = runner.invoke(app, ["scan", str(folders["opt"]), str(folders["text"])])
    assert done.exit_code == 2
    assert done.stderr.splitlines() == [
        f"error: {folders['opt']}: a Hugging Face model folder needs the transformers package, which is not installed",
        "hint: pip install 'deadrelu[hf]'  (transformers and tokenizers)"]


def test_api_scan_of_a_tokenizer_batch(folders):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folders["opt"]))
    batch = dict(tokenizer(list(TEXT_LINES), padding=True, return_tensors="pt"))
    batch["labels"] = batch["input_ids"].clone()  # never fed: OPTModel takes no labels
    model = deadrelu.load_model(folders["opt"])
    result = deadrelu.scan(model, [batch])
    site = result.sites[0]
    assert site.dead == 7 and site.observations == REAL_TOKENS
    assert "dict batches fed as keyword inputs: input_ids, attention_mask (labels left out); padding mask: " \
           "attention_mask" in result.warnings
