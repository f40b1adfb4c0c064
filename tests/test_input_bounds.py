"""Issue 18 §4-§6, §10: every bad input is exit 2 with one line and a hint (never a deadrelu
bug, exit 3), valid-but-unusual data scans, what hostile metadata asks for is bounded, and a
folder's own Python code never runs without --allow-remote-code, whatever stdin says.

Each case failed on the code before it (exit 3, a wrong message, a marker file, or memory
without bound); the file it feeds is crafted for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import deadrelu
from conftest import error_line as bad
from conftest import report_of, scan_files
from deadrelu.cli import app
from lm_fixtures import TEXT_LINES, save_model_folder, save_text, save_tokenizer


@pytest.fixture(scope="module")
def opt_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny OPT saved with its word-level tokenizer (7 of 32 units dead in its first FFN)."""
    pytest.importorskip("transformers", reason="the Hugging Face reader needs transformers: pip install 'deadrelu[hf]'")
    return save_model_folder(tmp_path_factory.mktemp("hf") / "opt", "opt")


def scan_text(runner, model: Path, data: Path, *args: object):
    from deadrelu.cli import app
    return runner.invoke(app, ["scan", str(model), str(data), "-q", *map(str, args)])


# -- .npy dtypes ------------------------------------------------------------------------------------


def test_float128_npy_is_exit_2(runner, files):
    path = files["dir"] / "long.npy"
    np.save(path, np.load(files["data"]).astype(np.longdouble))
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is float64 on this platform")
    line = bad(scan_files(runner, {**files, "data": path}), str(path), "float128 data (extended precision)")
    assert line.endswith("torch has no such dtype")


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i4"])
def test_big_endian_npy_scans_with_the_counts_of_native_data(runner, files, dtype):
    native = np.load(files["data"])
    data = native if dtype != ">i4" else np.round(native * 3)  # integers: -3 .. 3
    swapped = files["dir"] / "big_endian.npy"
    np.save(swapped, data.astype(dtype))
    np.save(files["dir"] / "native.npy", data.astype(np.dtype(dtype).newbyteorder("=")))
    args = [files["model"], None, "--arch", f"{files['arch']}:build", "--batch-size", "64"]
    report = report_of(runner, *[swapped if a is None else a for a in args])
    reference = report_of(runner, *[files["dir"] / "native.npy" if a is None else a for a in args])
    assert report["summary"]["dead"] == reference["summary"]["dead"]
    assert report["summary"]["dead"] == 8 or dtype == ">i4"  # the 8-dead truth is for inputs in [-1, 1]
    assert report["data"]["samples"] == 150 and report["data"]["dtype"] == np.dtype(dtype).name
    assert [s["active_rate_mean"] for s in report["sites"]] == [s["active_rate_mean"] for s in reference["sites"]]
    assert any("big-endian data" in w for w in report["warnings"])


def test_an_npz_archive_named_npy_is_exit_2(runner, files):
    path = files["dir"] / "really_npz.npy"
    with path.open("wb") as handle:
        np.savez(handle, x=np.load(files["data"]))
    bad(scan_files(runner, {**files, "data": path}), "an .npz archive named .npy")


# -- .jsonl and .txt text ------------------------------------------------------------------------------


@pytest.mark.parametrize("line, message", [
    ('{"text": ' + "[" * 200_000 + "]" * 200_000 + "}", ":2: JSON nested 200,001 deep (at most 64)"),
    ('{"text": "a cat", "id": ' + "7" * 5000 + "}", ":2: an integer too long to read"),
    ('{"text": "the \\ud800 cat"}', ":2: text that is not valid Unicode (a lone surrogate in 'the \\ud800 cat')"),
    ('{"text": 5}', ":2: field 'text' holds a number, not text"),
    ('{"text": ["the", "cat"]}', ":2: field 'text' holds a array, not text"),
    ('{"body": "the cat"}', ":2: no text field 'text' (it holds body)"),
    ('["the cat"]', ":2: a JSON array, not an object"),
])
def test_a_hostile_jsonl_line_is_exit_2_naming_the_line(runner, opt_folder, tmp_path, line, message):
    path = tmp_path / "text.jsonl"
    path.write_text('{"text": "the cat sat"}\n' + line + "\n", encoding="utf-8")
    assert bad(scan_text(runner, opt_folder, path)).endswith(f"{path}{message}")


def test_a_line_longer_than_the_limit_is_refused_before_it_is_read_whole(runner, opt_folder, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("the cat\n" + "the " * 300_000 + "\n", encoding="utf-8")  # a 1.2 MB line
    done = scan_text(runner, opt_folder, path)
    bad(done, f"{path}:2: a line longer than 1,048,576 bytes")
    assert "raise the limit with --max-line-bytes N" in done.stderr
    # A lower limit refuses the lines of ordinary text; a higher one lets it through.
    text = save_text(tmp_path / "lines.txt")
    longest = max(len(t.encode()) for t in TEXT_LINES)
    bad(scan_text(runner, opt_folder, text, "--max-line-bytes", longest - 1), "a line longer than")
    assert scan_text(runner, opt_folder, text, "--max-line-bytes", longest).exit_code == 0
    with pytest.raises(deadrelu.DataLoadError, match=r":2: a line longer than 1,048,576 bytes"):
        deadrelu.load_text(path, opt_folder)


def test_the_text_reader_reads_a_long_line_only_up_to_the_limit(tmp_path, monkeypatch):
    from deadrelu.load import text
    path = tmp_path / "huge.txt"
    path.write_bytes(b"short line\n" + b"x" * (8 << 20) + b"\n")  # an 8 MiB line
    reads: list[int] = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        readline = handle.readline
        handle = _Wrapped(handle, lambda limit=-1: reads.append(len(line := readline(limit))) or line)
        return handle
    monkeypatch.setattr(Path, "open", counting_open)
    with pytest.raises(deadrelu.DataLoadError, match="a line longer than 1,024 bytes"):
        text.read_examples(path, max_line_bytes=1024)
    assert max(reads) <= 1026  # never the 8 MiB


class _Wrapped:
    """A file handle whose readline is replaced (for counting bytes read)."""

    def __init__(self, handle, readline) -> None:
        self._handle, self.readline = handle, readline

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@pytest.mark.parametrize("flags, message", [
    (("--max-length", str(10 ** 20)), "--max-length must be at most 2,147,483,647, got 100000000000000000000"),
    (("--max-length", "0"), "--max-length must be >= 1, got 0"),
    (("--max-line-bytes", "0"), "--max-line-bytes must be >= 1, got 0"),
    (("--shuffle-seed", "-1", "--limit", "3"), "--shuffle-seed must be >= 0, got -1"),
])
def test_a_text_option_out_of_range_is_exit_2_naming_the_flag(runner, opt_folder, tmp_path, flags, message):
    path = save_text(tmp_path / "lines.txt")
    assert bad(scan_text(runner, opt_folder, path, *flags)) == f"error: {message}"


def test_a_negative_shuffle_seed_is_exit_2_for_arrays_and_the_api(runner, files):
    assert bad(scan_files(runner, files, "--limit", "5", "--shuffle-seed", "-1")) == \
        "error: --shuffle-seed must be >= 0, got -1"
    with pytest.raises(deadrelu.ConfigError, match=r"^shuffle_seed must be >= 0, got -1$"):
        deadrelu.scan(torch.nn.Sequential(torch.nn.Linear(10, 4), torch.nn.ReLU()), torch.zeros(8, 10), limit=4,
                      shuffle_seed=-1)


# -- Hugging Face folders: hostile JSON, and code that must not run ------------------------------------


def test_a_config_json_nested_100k_deep_is_exit_2(runner, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    np.save(tmp_path / "x.npy", np.zeros((4, 10), np.float32))
    assert bad(scan_text(runner, folder, tmp_path / "x.npy")) == \
        f"error: {folder}/config.json: JSON nested 100,001 deep (at most 64)"


def test_a_tokenizer_config_nested_deep_is_exit_2(runner, opt_folder, tmp_path):
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    save_tokenizer(tokenizer)
    (tokenizer / "tokenizer_config.json").write_text("[" * 50_000 + "]" * 50_000)
    line = bad(scan_text(runner, opt_folder, save_text(tmp_path / "t.txt"), "--tokenizer", tokenizer))
    assert line == f"error: {tokenizer}/tokenizer_config.json: JSON nested 50,000 deep (at most 64)"


def _folder_with_code(folder: Path, marker: Path, tokenizer: bool) -> Path:
    """A tokenizer folder (or a model folder's config) whose ``auto_map`` names a .py that writes ``marker``."""
    folder.mkdir()
    (folder / "custom_code.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizerFast, PretrainedConfig\n"
        "class CustomTokenizer(PreTrainedTokenizerFast):\n    pass\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'custom'\n")
    if tokenizer:
        save_tokenizer(folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.update(tokenizer_class="CustomTokenizer",
                      auto_map={"AutoTokenizer": ["custom_code.CustomTokenizer", "custom_code.CustomTokenizer"]})
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    else:
        (folder / "config.json").write_text(json.dumps({"model_type": "custom",
                                                        "auto_map": {"AutoConfig": "custom_code.CustomConfig"}}))
        (folder / "model.safetensors").write_bytes(b"x")
    return folder


def test_a_tokenizer_with_its_own_code_never_runs_it_even_when_stdin_says_yes(runner, opt_folder, tmp_path):
    marker = tmp_path / "MARKER"
    tokenizer = _folder_with_code(tmp_path / "tok", marker, tokenizer=True)
    text = save_text(tmp_path / "t.txt")
    done = runner.invoke(app, ["scan", str(opt_folder), str(text), "--tokenizer", str(tokenizer), "-q"],
                         input="y\ny\ny\n")
    assert bad(done) == f"error: {tokenizer}: its tokenizer is defined by the folder's own Python code (auto_map) " \
                        "and was not run"
    assert "--allow-remote-code" in done.stderr
    assert not marker.exists()


def test_no_transformers_call_can_ask_on_stdin(runner, opt_folder, tmp_path, monkeypatch):
    """Every from_pretrained gets trust_remote_code explicitly: transformers' prompt is never reached."""
    import builtins

    def no_prompt(*args, **kwargs):
        raise AssertionError("transformers asked on stdin")
    monkeypatch.setattr(builtins, "input", no_prompt)
    marker = tmp_path / "MARKER"
    model = _folder_with_code(tmp_path / "model", marker, tokenizer=False)
    np.save(tmp_path / "x.npy", np.zeros((4, 10), np.float32))
    bad(runner.invoke(app, ["scan", str(model), str(tmp_path / "x.npy")]), "its architecture is defined by the "
                                                                             "folder's own Python code")
    tokenizer = _folder_with_code(tmp_path / "tok", marker, tokenizer=True)
    with pytest.raises(deadrelu.DataLoadError, match="defined by the folder's own Python code"):
        deadrelu.load_text(save_text(tmp_path / "t.txt"), tokenizer)
    assert not marker.exists()


def test_allow_remote_code_is_what_lets_a_tokenizers_code_run(runner, opt_folder, tmp_path):
    marker = tmp_path / "MARKER"
    tokenizer = _folder_with_code(tmp_path / "tok", marker, tokenizer=True)
    report = json.loads(runner.invoke(app, ["scan", str(opt_folder), str(save_text(tmp_path / "t.txt")),
                                            "--tokenizer", str(tokenizer), "--allow-remote-code", "--json", "-"],
                                      ).stdout)
    assert marker.read_text() == "ran"
    assert report["summary"]["dead"] == 7
    assert any("ran the tokenizer folder's own Python code" in w for w in report["warnings"])


# -- monitor logs for trend ----------------------------------------------------------------------------

RECORD = {"format": "deadrelu-monitor", "version": 1, "step": 10, "mode": "probe",
          "sites": [{"name": "fc.1", "kind": "relu", "units": 4, "dead": 1, "saturated": 0, "dormant": 1,
                     "active_rate_mean": 0.5, "dead_units": [0]}]}


def _edit(change):
    record = json.loads(json.dumps(RECORD))
    change(record)
    return record


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("step"), "the record has no step"),
    (lambda r: r.update(step="20"), "step must be an integer (the training step), got '20'"),
    (lambda r: r.update(step=float("nan")), "step must be an integer (the training step), got nan"),
    (lambda r: r.update(step=20.5), "step must be an integer (the training step), got 20.5"),
    (lambda r: r.update(step=True), "step must be an integer (the training step), got True"),
    (lambda r: r.update(sites="fc.1"), "sites must be a list of sites, got 'fc.1'"),
    (lambda r: r.update(sites=None), "sites must be a list of sites, got None"),
    (lambda r: r.update(sites=[3]), "sites[0] must be an object, got 3"),
    (lambda r: r["sites"][0].pop("name"), "sites[0].name must be a string, got None"),
    (lambda r: r["sites"][0].update(units=-4), "sites[0].units must be an integer >= 0, got -4"),
    (lambda r: r["sites"][0].update(dead=9), "sites[0].dead must be at most units (4), got 9"),
    (lambda r: r["sites"][0].update(units=2 ** 80), "sites[0].units must be an integer >= 0, got 1208925819614629174706176"),
    (lambda r: r["sites"][0].update(active_rate_mean="high"), "sites[0].active_rate_mean must be a finite number or "
                                                              "null, got 'high'"),
    (lambda r: r["sites"][0].update(dead_units=[7]), "sites[0].dead_units must be a list of unit indices below 4, "
                                                     "got [7]"),
])
def test_a_bad_monitor_record_is_exit_2_naming_the_line_and_field(runner, tmp_path, change, message):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(RECORD) + "\n" + json.dumps(_edit(change)) + "\n", encoding="utf-8")
    assert bad(runner.invoke(app, ["trend", str(log)])) == f"error: {log}:2: {message}"


@pytest.mark.parametrize("line, message", [
    ('{"format": "deadrelu-monitor", "version": 1, "step": ' + "9" * 5000 + ', "sites": []}',
     ":1 holds an integer too long to read"),
    ('{"format": "deadrelu-monitor", "version": 1, "step": 1, "sites": ' + "[" * 100_000 + "]" * 100_000 + "}",
     ":1 holds JSON nested 100,001 deep (at most 16)"),
    ('{"format": "deadrelu-monitor", "version": 1, "step": 1, "sites": [{"name": "\\udc00", "kind": "relu", '
     '"units": 1, "dead": 0, "saturated": 0, "dormant": 0}]}', ":1 holds text that is not valid Unicode"),
])
def test_hostile_json_in_a_monitor_log_is_exit_2(runner, tmp_path, line, message):
    log = tmp_path / "log.jsonl"
    log.write_text(line + "\n" + json.dumps(RECORD) + "\n", encoding="utf-8")
    assert bad(runner.invoke(app, ["trend", str(log)])).startswith(f"error: {log}{message}")


def test_a_log_with_a_new_site_in_every_record_is_bounded(runner, tmp_path):
    """4,000 records, each naming a site no other names: a 4,000 x 4,000 table (16M cells) is refused."""
    log = tmp_path / "log.jsonl"
    lines = [json.dumps(_edit(lambda r, k=k: (r.update(step=k), r["sites"][0].update(name=f"s{k}"))))
             for k in range(4000)]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    line = bad(runner.invoke(app, ["trend", str(log)]))
    assert line == f"error: {log}: 4,000 distinct sites over 4,000 points, more than the 10,000,000 cells a " \
                   "trend table holds"
    # a real shape of log (the same site at every step) still renders
    log.write_text("\n".join(json.dumps(_edit(lambda r, k=k: r.update(step=k))) for k in range(50)) + "\n")
    assert runner.invoke(app, ["trend", str(log)]).exit_code == 0


# -- config TOML, --arch-kwargs, option bounds ---------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    (b"[scan]\nbatch_size = 8\n# caf\xe9\n", "is not UTF-8 text (invalid continuation byte at byte 27)"),
    (b"[scan]\nlayers = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
     "is not a deadrelu config: arrays or tables nested too deep"),
    (b"[scan]\nbatch_size = " + b"7" * 5000 + b"\n", "is not a deadrelu config: it holds an integer too long to read"),
])
def test_a_hostile_config_file_is_exit_2(runner, files, content, message):
    config = files["dir"] / "bad.toml"
    config.write_bytes(content)
    line = bad(scan_files(runner, files, "--config", config))
    assert line.startswith(f"error: config file {config} {message}"), line


@pytest.mark.parametrize("flags, message", [
    (("--batch-size", str(2 ** 60)), "--batch-size must be at most 9,007,199,254,740,992, got 1152921504606846976"),
    (("--limit", str(10 ** 40)), "--limit must be at most 9,007,199,254,740,992, got an integer of 41 digits"),
])
def test_a_count_no_report_could_hold_is_exit_2(runner, files, flags, message):
    assert bad(scan_files(runner, files, *flags)) == f"error: {message}"


@pytest.mark.parametrize("kwargs, message", [
    ('{"width": ' + "[" * 30_000 + "]" * 30_000 + "}", "--arch-kwargs: JSON nested 30,001 deep (at most 32)"),
    ('{"width": ' + "3" * 5000 + "}", "--arch-kwargs: an integer too long to read"),
    ('{"width": 32', "--arch-kwargs is not valid JSON: Expecting ',' delimiter at column 13"),
])
def test_hostile_arch_kwargs_are_exit_2(runner, files, kwargs, message):
    assert bad(scan_files(runner, files, "--arch-kwargs", kwargs)) == f"error: {message}"


# -- merge: parts of parts, and shard counts the parts cannot back --------------------------------------


@pytest.fixture
def shards(runner, files) -> list[Path]:
    """The 3 shards (50 samples each) of a scan of the 8-dead model over 150 samples."""
    paths = []
    for index in range(3):
        path = files["dir"] / f"part{index}.json"
        done = scan_files(runner, files, "--shard", f"{index}/3", "--batch-size", "50", "--json", path, "-q")
        assert done.exit_code == 0, done.output
        paths.append(path)
    return paths


def merge(runner, *args: object):
    return runner.invoke(app, ["merge", *map(str, args), "-q"])


def test_a_partial_merge_merges_with_the_missing_shard_into_the_whole(runner, shards, tmp_path):
    assert merge(runner, shards[0], shards[2], "--allow-missing", "--json", tmp_path / "partial.json").exit_code == 0
    partial = json.loads((tmp_path / "partial.json").read_text())
    assert partial["data"]["partial"] and partial["data"]["shard"]["index"] == [0, 2]
    done = merge(runner, tmp_path / "partial.json", shards[1], "--json", tmp_path / "whole.json")
    assert done.exit_code == 0, done.output
    assert merge(runner, *shards, "--json", tmp_path / "direct.json").exit_code == 0
    whole, direct = (json.loads((tmp_path / name).read_text()) for name in ("whole.json", "direct.json"))
    assert whole["data"]["samples"] == 150 and whole["data"]["shard"] is None and not whole["data"]["partial"]
    assert whole["summary"]["dead"] == 8 and not any(w.startswith("PARTIAL") for w in whole["warnings"])
    assert whole["environment"]["merged_from"] == direct["environment"]["merged_from"] == 3
    assert whole["sites"] == direct["sites"] and whole["summary"] == direct["summary"]
    # the partial result overlaps its own shards
    bad(merge(runner, tmp_path / "partial.json", shards[2]), "are both shard 2/3: overlapping shards")


def _forged(shard_file: Path, tmp_path: Path, **changes) -> Path:
    document = json.loads(shard_file.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            document["data"][section][field] = value
        else:
            document["data"][section] = value
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"shard__count": 10 ** 12}, "split into 1,000,000,000,000 shards, more than the 65,536 a merge takes"),
    ({"shard__count": 1000}, "split into 1,000 shards of data of 150 samples; a shard holds at least one sample"),
    ({"shard__index": 7}, "shard 7/3 does not exist"),
    ({"samples": 400}, "the parts hold 400 samples, more than the 150 of the data they are shards of"),
])
def test_merge_bounds_what_a_part_claims_by_the_parts_given(runner, shards, tmp_path, changes, message):
    forged = _forged(shards[0], tmp_path, **changes)
    done = merge(runner, forged, "--allow-missing")
    bad(done, message)


def test_merge_of_many_missing_shards_names_the_first_few(runner, shards, tmp_path):
    forged = _forged(shards[0], tmp_path, shard__count=100, shard__of=150)
    line = bad(merge(runner, forged))
    assert line == "error: missing shard(s) 1/100, 2/100, 3/100, 4/100, 5/100, 6/100, 7/100, 8/100 and 91 more: " \
                   "1 of 100 given"
