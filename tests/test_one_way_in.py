"""Issue 19: one way in. What ``scan`` accepts, ``trend``, ``prune``, ``fix``, ``Monitor`` and the API accept too.

Each item runs through the CLI and through the API, on a Hugging Face folder + text
(``tests/lm_fixtures.py``: an OPT whose first FFN has exactly 7 units killed by fc1's bias,
a T5) and on a timm-style CNN (``tests/real_nets.py``: ``timm_like``, whose ``blocks.1.act2``
has units 0-3 dead through the shortcut; ``push_beta`` kills more at ``stem.2.bn1.act``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import deadrelu
from deadrelu.cli import app
from deadrelu.commands.options import INPUT_FLAGS
from lm_fixtures import TEXT_LINES, opt, real_tokens, save_model_folder, save_text, save_tokenizer
from real_nets import T5_DEAD, images, push_beta, t5_like, t5_tokens, timm_like

transformers = pytest.importorskip("transformers", reason="transformers is not installed: pip install 'deadrelu[hf]'")

NETS = str(Path(__file__).with_name("real_nets.py"))
REAL_TOKENS = real_tokens()
#: the OPT fixture's truth: fc1's bias kills exactly these many units of the first FFN
OPT_DEAD = 7
FIRST_FFN = "decoder.layers.0.activation_fn"


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> dict[str, Path]:
    """Two OPT checkpoints of one run (7 and 3 dead units in the first FFN), a T5, text, token ids."""
    root = tmp_path_factory.mktemp("one-way-in")
    run = root / "run"
    for step, dead in ((100, OPT_DEAD), (200, 3)):
        folder = run / f"checkpoint-{step}"
        opt(dead).save_pretrained(str(folder))
        save_tokenizer(folder)
    made = {"run": run, "opt": run / "checkpoint-100", "opt200": run / "checkpoint-200",
            "t5": save_model_folder(root / "t5", "t5"), "text": save_text(root / "prompts.txt"), "dir": root}
    ids = np.random.default_rng(0).integers(7, 30, size=(6, 5)).astype(np.int64)
    np.save(root / "ids.npy", ids)
    made["ids"] = root / "ids.npy"
    (root / "prompts.jsonl").write_text("".join(json.dumps({"body": line}) + "\n" for line in TEXT_LINES))
    made["jsonl"] = root / "prompts.jsonl"
    return made


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> dict[str, Path]:
    """timm-style CNN checkpoints: step 1 as built (blocks.1.act2: 0-3 dead), step 2 with
    stem.2.bn1's β pushed on channels 1 and 5 (dead at stem.2.bn1.act too); 24 images."""
    root = tmp_path_factory.mktemp("cnn")
    torch.save(timm_like().state_dict(), root / "step_1.pt")
    pushed = timm_like()
    push_beta(pushed, "stem.2.bn1", [1, 5])
    torch.save(pushed.state_dict(), root / "step_2.pt")
    np.save(root / "images.npy", images().numpy())
    return {"step1": root / "step_1.pt", "step2": root / "step_2.pt", "images": root / "images.npy", "dir": root,
            "arch": f"{NETS}:timm_like"}


def invoke_json(runner, *args) -> dict:
    done = runner.invoke(app, [*map(str, args), "--json", "-"])
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def trend_json(runner, tmp_path: Path, *args) -> dict:
    """``deadrelu trend ... --json FILE`` (trend writes its points to a file), read back."""
    out = tmp_path / "trend.json"
    done = runner.invoke(app, ["trend", *map(str, args), "--json", str(out)])
    assert done.exit_code == 0, done.output
    return json.loads(out.read_text())


def dead_by_site(report: dict) -> dict[str, list[int]]:
    return {site["name"]: site["dead_units"] for site in report["sites"] if site["dead_units"]}


def same_scan(api: deadrelu.ScanResult, cli: dict) -> None:
    """The API's result is the CLI's: sites, counts, unit statistics, data and model provenance."""
    mine = json.loads(api.to_json())
    assert [s["name"] for s in mine["sites"]] == [s["name"] for s in cli["sites"]]
    for ours, theirs in zip(mine["sites"], cli["sites"]):
        for key in ("units", "observations", "dead_units", "saturated_units", "dormant_units", "unit_stats"):
            assert ours[key] == theirs[key], (ours["name"], key)
    assert mine["summary"] == cli["summary"]
    for key in ("source", "samples", "mask", "sha256"):
        assert mine["data"][key] == cli["data"][key], key
    assert mine["model"] == cli["model"]
    assert mine["warnings"] == cli["warnings"]


# -- 1. trend accepts what scan accepts; prune, fix and trend take the same input flags ---------------------


def test_trend_over_hugging_face_checkpoints_on_text(runner, hf, tmp_path):
    """A run folder of save_pretrained checkpoints and a .txt file (both refused before: "holds
    weights only ... --arch needed", "unsupported data format .txt")."""
    report = trend_json(runner, tmp_path, hf["run"], hf["text"], "--batch-size", "3")
    points = report["points"]
    assert [Path(p["model"]["source"]).name for p in points] == ["checkpoint-100", "checkpoint-200"]
    assert [dict((s["name"], s["dead"]) for s in p["sites"])[FIRST_FFN] for p in points] == [OPT_DEAD, 3]
    assert all(p["sites"][0]["observations"] == REAL_TOKENS for p in points)  # padding masked out
    api = deadrelu.trend.scan_checkpoints([hf["opt"], hf["opt200"]], hf["text"], batch_size=3)
    assert [r.site(FIRST_FFN).dead for r in api] == [OPT_DEAD, 3]
    assert [json.loads(r.to_json())["sites"] for r in api] == [p["sites"] for p in points]


def test_trend_takes_the_text_flags(runner, hf, tmp_path):
    report = trend_json(runner, tmp_path, hf["opt"], hf["jsonl"], "--text-field", "body", "--max-length", "3",
                         "--batch-size", "3", "--hf-class", "AutoModel")
    capped = sum(min(3, len(line.split())) for line in TEXT_LINES)
    assert report["points"][0]["sites"][0]["observations"] == capped
    api = deadrelu.trend.scan_checkpoints([hf["opt"]], hf["jsonl"], text_field="body", max_length=3, batch_size=3)
    assert api[0].sites[0].observations == capped


def test_trend_over_cnn_checkpoints_and_as_weights_of_a_factory(runner, cnn, tmp_path):
    want = [{"blocks.1.act2": [0, 1, 2, 3]}, {"stem.2.bn1.act": [1, 5], "blocks.1.act2": [0, 1, 2, 3]}]
    by_arch = trend_json(runner, tmp_path, cnn["step1"], cnn["step2"], cnn["images"], "--arch", cnn["arch"],
                          "--batch-size", "8")
    assert [dead_by_site(p) for p in by_arch["points"]] == want
    by_factory = trend_json(runner, tmp_path, cnn["step1"], cnn["step2"], "--model", cnn["arch"], "--data",
                             f"{NETS}:images", "--batch-size", "8")
    assert [dead_by_site(p) for p in by_factory["points"]] == want
    api = deadrelu.trend.scan_checkpoints([cnn["step1"], cnn["step2"]], cnn["images"], arch=cnn["arch"],
                                          batch_size=8)
    assert [dead_by_site(json.loads(r.to_json())) for r in api] == want


def test_scan_prune_fix_and_trend_declare_the_input_flags_once(runner):
    """Every flag of the inputs reads the same in the four commands (one declaration, INPUT_FLAGS)."""
    import typer.main

    command = typer.main.get_command(app)
    declared = {}
    for name in ("scan", "prune", "fix", "trend"):
        params = {p.name: p for p in command.commands[name].params}
        declared[name] = {field: (params[field].opts, params[field].help) for field, *_ in INPUT_FLAGS}
    assert declared["scan"] == declared["prune"] == declared["fix"] == declared["trend"]
    flags = {opt for opts, _ in declared["fix"].values() for opt in opts}
    assert {"--kwarg", "--mask", "--tokenizer", "--text-field", "--max-length", "--input-dtype",
            "--hf-class"} <= flags


def test_fix_and_prune_take_the_mask_and_the_keyword_inputs(runner, tmp_path):
    """The padding mask reaches prune's and fix's scans: PadDetector's unit 0 fires only on padding."""
    from test_token_inputs import PadDetector, padded_tokens

    ids, mask = padded_tokens()
    np.savez(tmp_path / "tokens.npz", input_ids=ids.numpy(), attention_mask=mask.numpy())
    torch.save(PadDetector().state_dict(), tmp_path / "m.pt")
    base = [tmp_path / "m.pt", tmp_path / "tokens.npz", "--arch", f"{Path(__file__).with_name('test_token_inputs.py')}"
            ":PadDetector", "--kwarg", "input_ids"]
    # Without the mask unit 0 fires on padding: nothing is dead, so the swap has nothing to do.
    for command, unmasked in ((["prune"], [("act", 0)]), (["fix", "--swap-activation", "elu"], [])):
        masked = invoke_json(runner, *command, *base, "--kwarg", "attention_mask", "--mask", "attention_mask")
        plain = invoke_json(runner, *command, *base)
        assert [(d["site"], d["dead_before"]) for d in masked["before_after"]] == [("act", 1)]
        assert [(d["site"], d["dead_before"]) for d in plain["before_after"]] == unmasked


# -- 2. Monitor takes what scan takes ---------------------------------------------------------------------------


def test_monitor_with_a_dict_probe_leaves_padding_out(hf):
    """``Monitor(..., kwargs=..., mask=...)`` (refused before: "unknown setting 'kwargs'"), and a dict
    probe holding input_ids fed as a tokenizer's batch: observations are the real tokens only."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf["opt"]))
    probe = dict(tokenizer(list(TEXT_LINES), padding=True, return_tensors="pt"))
    assert int(probe["attention_mask"].sum()) == REAL_TOKENS < probe["input_ids"].numel()
    model = deadrelu.load_model(hf["opt"]).module
    named = deadrelu.Monitor(model, probe=probe, every=1, batch_size=3, kwargs=["input_ids", "attention_mask"],
                             mask="attention_mask")
    whole = deadrelu.Monitor(model, probe=probe, every=1, batch_size=3)
    for monitor in (named, whole):
        monitor.step(0)
        site = monitor.last_result.site(FIRST_FFN)
        assert site.observations == REAL_TOKENS and site.dead == OPT_DEAD
        assert monitor.last_result.data["mask"] == "attention_mask"
    text = deadrelu.Monitor(model, probe=hf["text"], every=1, tokenizer=hf["opt"], max_length=3, batch_size=3)
    text.step(0)
    assert text.last_result.sites[0].observations == sum(min(3, len(line.split())) for line in TEXT_LINES)
    with pytest.raises(deadrelu.ConfigError, match="describe how the probe feeds the model"):
        deadrelu.Monitor(model, window=2, every=4, mask="attention_mask")


def test_monitor_of_a_cnn_takes_the_data_options(cnn):
    model = timm_like()
    monitor = deadrelu.Monitor(model, probe=cnn["images"], every=2, limit=16, shuffle_seed=3, batch_size=8)
    monitor.step(0)
    result = monitor.last_result
    assert result.data["samples"] == 16 and result.site("blocks.1.act2").verdict.dead_units == [0, 1, 2, 3]
    assert "scanned a random subset of 16 of 24 samples (--shuffle-seed 3)" in result.warnings


# -- 3. the API does what the CLI does ---------------------------------------------------------------------------


def test_api_scan_of_a_model_folder_and_a_text_file_equals_the_cli(runner, hf):
    cli = invoke_json(runner, "scan", hf["opt"], hf["text"], "--batch-size", "3", "-q")
    api = deadrelu.scan(str(hf["opt"]), str(hf["text"]), batch_size=3)
    assert api.site(FIRST_FFN).dead == OPT_DEAD and api.site(FIRST_FFN).observations == REAL_TOKENS
    same_scan(api, cli)
    described = deadrelu.Inputs(model=hf["opt"], data=hf["text"])
    same_scan(deadrelu.scan(described, batch_size=3), cli)


def test_api_scan_of_a_cnn_checkpoint_equals_the_cli(runner, cnn):
    cli = invoke_json(runner, "scan", cnn["step2"], cnn["images"], "--arch", cnn["arch"], "--batch-size", "8", "-q")
    api = deadrelu.scan(cnn["step2"], cnn["images"], arch=cnn["arch"], batch_size=8)
    assert dead_by_site(cli) == {"stem.2.bn1.act": [1, 5], "blocks.1.act2": [0, 1, 2, 3]}
    same_scan(api, cli)


def test_a_config_file_describes_the_inputs_for_the_cli_and_the_api(runner, hf, tmp_path):
    config = tmp_path / "inputs.toml"
    config.write_text(f'[scan]\nbatch_size = 3\n\n[inputs]\nmodel = "{hf["opt"]}"\ndata = "{hf["jsonl"]}"\n'
                      'text_field = "body"\nmax_length = 3\n')
    cli = invoke_json(runner, "scan", "--config", config, "-q")
    capped = sum(min(3, len(line.split())) for line in TEXT_LINES)
    assert cli["sites"][0]["observations"] == capped
    same_scan(deadrelu.scan(deadrelu.Inputs.from_config(config), config=config), cli)


def test_api_fix_equals_the_cli(runner, hf, cnn, tmp_path):
    """fix's scan -> repair -> rescan -> save is deadrelu.fix: the CLI prints what it returns."""
    cli = invoke_json(runner, "fix", cnn["step2"], cnn["images"], "--arch", cnn["arch"], "--batch-size", "8",
                      "--recycle", "dead", "--out", tmp_path / "cli.pt")
    api = deadrelu.fix(cnn["step2"], cnn["images"], arch=cnn["arch"], batch_size=8, recycle="dead",
                       out=tmp_path / "api.pt")
    assert {**api.to_dict(), "written": []} == {**cli, "written": []}
    assert api.before.site("stem.2.bn1.act").verdict.dead_units == [1, 5]
    cli_state = torch.load(tmp_path / "cli.pt", weights_only=True)
    api_state = torch.load(tmp_path / "api.pt", weights_only=True)
    assert cli_state.keys() == api_state.keys()


def test_prune_and_recycle_a_model_folder_fed_text(runner, hf):
    """Keyword inputs reach the repairs' graph trace too: OPT's 7 dead units are pruned (exactly:
    the outputs are checked) and recycled, through the CLI and the API alike."""
    cli = invoke_json(runner, "prune", hf["opt"], hf["text"], "--batch-size", "3")
    api = deadrelu.fix(hf["opt"], hf["text"], batch_size=3, prune=True)
    assert api.to_dict() == cli
    assert [(d["site"], d["dead_before"], d["dead_after"]) for d in cli["before_after"]] == [
        (FIRST_FFN, OPT_DEAD, 0), ("decoder.layers.1.activation_fn", 0, 0)]
    assert api.before.site(FIRST_FFN).observations == REAL_TOKENS  # the scans leave padding out
    recycled = invoke_json(runner, "fix", hf["opt"], hf["text"], "--batch-size", "3", "--recycle", "dead")
    assert recycled["fire_after_recycling"] == {"firing": OPT_DEAD, "recycled": OPT_DEAD}
    again = deadrelu.fix(hf["opt"], hf["text"], batch_size=3, recycle="dead")
    assert again.to_dict()["fire_after_recycling"] == recycled["fire_after_recycling"]
    assert again.to_dict()["before_after"] == recycled["before_after"]


def test_the_ci_files_are_library_writers(runner, cnn, tmp_path):
    runner.invoke(app, ["scan", str(cnn["step1"]), str(cnn["images"]), "--arch", cnn["arch"], "-q",
                        "--junit", str(tmp_path / "cli.xml"), "--markdown", str(tmp_path / "cli.md")])
    result = deadrelu.scan(cnn["step1"], cnn["images"], arch=cnn["arch"])
    lines = deadrelu.write_ci_reports(result, tmp_path / "api.xml", tmp_path / "api.md")
    assert lines == [f"JUnit report: {tmp_path / 'api.xml'}", f"Markdown summary: {tmp_path / 'api.md'}"]
    strip = lambda text: "\n".join(line for line in text.splitlines() if "time=" not in line and "timestamp" not in line)
    assert strip((tmp_path / "api.md").read_text()) == strip((tmp_path / "cli.md").read_text())
    assert strip((tmp_path / "api.xml").read_text()) == strip((tmp_path / "cli.xml").read_text())


# -- 4. an encoder-decoder fed token ids ------------------------------------------------------------------------


def test_t5_fed_a_token_id_array_runs_its_decoder_too(runner, hf):
    """Token ids in an .npy (not only text) feed T5's decoder as decoder_input_ids (failed before:
    "You must specify exactly one of input_ids or inputs_embeds")."""
    cli = invoke_json(runner, "scan", hf["t5"], hf["ids"], "--batch-size", "3", "-q")
    sites = {s["name"]: s["observations"] for s in cli["sites"]}
    assert len(sites) == 4 and set(sites.values()) == {30}  # 6 rows x 5 tokens, encoder and decoder
    assert "encoder-decoder model: its decoder fed the same tokens (decoder_input_ids)" in cli["warnings"]
    same_scan(deadrelu.scan(hf["t5"], hf["ids"], batch_size=3), cli)


def test_a_plain_torch_encoder_decoder_fed_token_ids(runner, tmp_path):
    """real_nets.t5_like (no transformers): the decoder runs on the token ids too, and the planted dead
    units of both stacks are found exactly, by the CLI (a factory and a .npy) and the API alike."""
    np.save(tmp_path / "ids.npy", t5_tokens().numpy())
    cli = invoke_json(runner, "scan", "--model", f"{NETS}:t5_like", tmp_path / "ids.npy", "--batch-size", "5", "-q")
    assert dead_by_site(cli) == T5_DEAD
    assert {s["name"]: s["observations"] for s in cli["sites"]} == {"encoder.ffn.act": 72, "decoder.ffn.act": 72}
    api = deadrelu.scan(t5_like(), tmp_path / "ids.npy", batch_size=5)
    assert {s.name: s.verdict.dead_units for s in api.sites if s.dead} == T5_DEAD
    same = json.loads(api.to_json())
    assert [s["unit_stats"] for s in same["sites"]] == [s["unit_stats"] for s in cli["sites"]]
    with pytest.raises(deadrelu.ForwardError) as failed:
        deadrelu.scan(t5_like(), t5_tokens(), decoder_inputs=False)
    assert "missing 1 required positional argument: 'decoder_input_ids'" in failed.value.message
    assert "was not fed an input it needs" in failed.value.hint


def test_a_missing_decoder_input_is_named_not_blamed_on_dtype_or_shape(hf, cnn):
    with pytest.raises(deadrelu.ForwardError) as failed:
        deadrelu.scan(hf["t5"], hf["ids"], batch_size=3, decoder_inputs=False)
    assert "You must specify exactly one of input_ids or inputs_embeds" in failed.value.message
    assert failed.value.hint.startswith("decoder (T5Stack) was not fed an input it needs (fed: 1 positional)")
    assert "dtype" not in failed.value.hint and "shape" not in failed.value.hint
    # A wrong shape still gets the shape hint.
    with pytest.raises(deadrelu.ForwardError) as wrong:
        deadrelu.scan(cnn["step1"], np.zeros((4, 5, 16, 16), dtype=np.float32), arch=cnn["arch"])
    assert "rejected the input (float32); check the data's shape and dtype" in wrong.value.hint
