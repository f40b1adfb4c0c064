"""Diagnosis benchmark: does deadrelu's top suggestion name the cause the units really died of?

    python benchmarks/diagnosis.py                  # the benchmark zoo; writes RESULTS_diagnosis.md + results/diagnosis.json
    python benchmarks/diagnosis.py --size ci        # the small zoo the tests run
    python benchmarks/diagnosis.py --no-write       # print only

Every model of the zoo (``tests/diagnosis_zoo.py``) is TRAINED so that its units die for one
known cause: too high an SGD learning rate, too high an Adam learning rate saved with its optimizer
state, a negative bias initialisation trained at a sane rate, standardised-input training scanned on
raw 0..255 pixels, a dead first layer starving the next, BatchNorm beta pushed negative, zeroed
weight rows, or nothing (healthy). Each is scanned with ``deadrelu.scan`` (the optimizer state passed
along where the case saved one) and the benchmark prints, per scenario, the cause the top suggestion
names, whether that is the known one (top-1), how many of the model's dead units it explains, and
the verdict (healthy models must be ``ok`` with no warning-level suggestion).

"Dead" in the fix columns counts every unit that never fires (a LeakyReLU unit whose input never goes
positive is not revived by the swap) plus saturated units.

Then it proves the fix: for each cause it applies the top suggestion's own action to a copy of the
model (its ``code``, run as a user would paste it; for ``input-scale`` the data fed the way the model
was trained) and fine-tunes briefly at a sane rate (Adam, lr 1e-3; for ``learning-rate`` that lower
rate IS the fix), reporting dead units before -> after and held-out accuracy before -> after.

Suggestions written before suggestions carried a ``cause`` are mapped by id (``LEGACY_CAUSES``), so
the same script measures the code before this change (run it with PYTHONPATH pointing at an older
checkout and ``--label before``).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import diagnosis_zoo as zoo  # noqa: E402

import deadrelu  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS_diagnosis.md"
JSON_OUT = ROOT / "benchmarks" / "results" / "diagnosis.json"

#: what a suggestion id meant before suggestions carried a ``cause``
LEGACY_CAUSES = {"bias-reset": "bias", "batchnorm-dead": "batchnorm", "init-not-he": "init", "selu-init": "init",
                 "dead-share": "activation", "guide-cnn-batchnorm": "activation", "guide-selu-mlp": "activation",
                 "guide-gelu-transformer": "activation", "selu-cnn": "activation", "selu-batchnorm": "activation",
                 "selu-dropout": "activation", "prelu-slopes": "activation", "depth-trend": "learning-rate",
                 "saturation": "learning-rate", "negative-only": "bias"}
#: steps of the fine-tune after a fix
FINETUNE_STEPS = 150


def cause_of(suggestion: dict[str, Any]) -> str | None:
    """The cause a suggestion names (mapped from its id for suggestions that carry none)."""
    if "cause" in suggestion:
        return suggestion["cause"]
    return LEGACY_CAUSES.get(str(suggestion.get("id")))


def scan(model: nn.Module, data: torch.Tensor, optimizer_state: dict | None = None) -> deadrelu.ScanResult:
    """``deadrelu.scan`` with the optimizer state where this deadrelu takes one."""
    extra = {}
    if optimizer_state is not None and "optimizer" in inspect.signature(deadrelu.scan).parameters:
        extra["optimizer"] = optimizer_state
    return deadrelu.scan(model, data, batch_size=256, **extra)


def stuck(result: deadrelu.ScanResult) -> int:
    """Units the verdict counts as dead (no gradient) or saturated, over all sites."""
    from deadrelu.judge.overall import stuck_mask
    return sum(int(stuck_mask(site).sum()) for site in result.sites)


def problem_units(result: deadrelu.ScanResult) -> int:
    """Dead (never active, leaky kinds included) or saturated units, over all sites."""
    return sum(int((site.verdict.dead | site.verdict.saturated).sum()) for site in result.sites)


def verdict(result: deadrelu.ScanResult) -> str:
    from deadrelu.judge.overall import overall
    summary = result.to_dict(unit_stats=False)["summary"]
    return str(summary.get("verdict") or overall(result).level.value.lower())


def top_specific(result: deadrelu.ScanResult) -> dict[str, Any] | None:
    return result.suggestions[0] if result.suggestions else None


def apply_fix(case: zoo.Case, suggestion: dict[str, Any], model: nn.Module,
              optimizer: torch.optim.Optimizer) -> tuple[str, torch.Tensor]:
    """Apply ``suggestion``'s action to ``model``: run its code as a user would; returns what was
    done and the data the model is fed afterwards."""
    cause = cause_of(suggestion)
    data = case.scan_data
    if cause == "input-scale":
        assert case.model_input is not None
        return "fed the data as the model was trained (standardised)", case.model_input(case.scan_data)
    code = str(suggestion.get("code") or "")
    if not code:
        return "nothing to apply (no code)", data
    namespace: dict[str, Any] = {"model": model, "torch": torch, "nn": nn, "optimizer": optimizer, "data": data,
                                 "print": lambda *args, **kwargs: None}
    exec(code, namespace)  # noqa: S102 - the suggestion's own snippet, as a user would paste it
    return "ran its code", data


def prove(case: zoo.Case, result: deadrelu.ScanResult, seed: int = 0,
          top: dict[str, Any] | None = None) -> dict[str, Any]:
    """Dead units and accuracy before -> after applying a suggestion (default: the top one) and fine-tuning."""
    top = top or top_specific(result)
    assert top is not None
    model = copy.deepcopy(case.model)
    scan_input = case.scan_data
    accuracy_input = case.scan_test_x
    # The fine-tune runs at a sane rate: Adam at 1e-3 (for learning-rate advice, that IS the fix; the
    # code's "lr *= 0.1" then acts on this optimizer too).
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before_dead, before_acc = problem_units(result), case.accuracy(case.model, accuracy_input)
    torch.manual_seed(seed)             # recycled units draw fresh weights: the same ones on every run
    what, fed = apply_fix(case, top, model, optimizer)
    if cause_of(top) == "input-scale":
        accuracy_input = None          # the test set fed as the model was trained
    else:
        fed = scan_input
    torch.manual_seed(seed)
    case.finetune(model, steps=FINETUNE_STEPS, seed=seed, optimizer=optimizer)
    after = scan(model, fed)
    return {"applied": what, "dead_before": before_dead, "dead_after": problem_units(after),
            "accuracy_before": round(before_acc, 3), "accuracy_after": round(case.accuracy(model, accuracy_input), 3)}


#: the bundled sample (sample_models/mlp_high_lr.pt), scored as one more learning-rate scenario
SAMPLE = "sample/mlp-high-lr"


def sample_case() -> zoo.Case:
    """The bundled sample with its training data and labels as make_samples drew them (repair_finetune.data)."""
    import repair_finetune
    x, y, x_test, y_test = repair_finetune.data()
    model = repair_finetune.load().eval()
    return zoo.Case(name=SAMPLE, cause="learning-rate", arch="mlp", model=model, scan_data=x, train_x=x, train_y=y,
                    test_x=x_test, test_y=y_test, how="the bundled sample: plain SGD at lr 0.4 (sample_models/README.md)")


def run_case(name: str, size: str, fix: bool, seed: int = 0) -> dict[str, Any]:
    started = time.perf_counter()
    case = sample_case() if name == SAMPLE else zoo.build(name, size, seed=seed)
    trained = time.perf_counter() - started
    result = scan(case.model, case.scan_data, case.optimizer_state)
    top = top_specific(result)
    top_cause = cause_of(top) if top else None
    dead = stuck(result)
    warnings = [s["id"] for s in result.suggestions if s.get("severity") in ("warning", "critical")]
    row: dict[str, Any] = {
        "case": name, "arch": case.arch, "known_cause": case.cause, "how": case.how,
        "units": result.summary.units, "dead": dead, "problem_units": problem_units(result),
        "verdict": verdict(result), "top_id": top["id"] if top else None, "top_cause": top_cause,
        "top_title": top["title"] if top else None,
        "top_units_explained": int(top.get("units_explained") or 0) if top else 0,
        "warning_suggestions": warnings, "train_seconds": round(trained, 2),
    }
    if case.cause is None:
        row["correct"] = row["verdict"] == "ok" and not warnings
    else:
        row["correct"] = top_cause == case.cause
        if fix and top is not None:
            row["fix"] = prove(case, result)
        generic = next((s for s in result.suggestions if s["id"] == "dead-share" and s.get("code")), None)
        if fix and generic is not None:
            row["generic_fix"] = prove(case, result, top=generic)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | arch | known cause | top suggestion's cause | top-1 | dead units explained by #1 | "
             "verdict | fix applied | dead before → after | accuracy before → after |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        fix = row.get("fix")
        explained = f"{row['top_units_explained']} of {row['problem_units']}" if row["known_cause"] else "–"
        verdict_cell = row["verdict"]
        if row["known_cause"] is None and row["warning_suggestions"]:
            verdict_cell += f" + {len(row['warning_suggestions'])} warning(s)"
        applied = fix["applied"] if fix else "–"
        dead = f"{fix['dead_before']} → {fix['dead_after']}" if fix else "–"
        accuracy = f"{fix['accuracy_before']} → {fix['accuracy_after']}" if fix else "–"
        lines.append(f"| {row['case']} | {row['arch']} | {row['known_cause'] or 'none (healthy)'} | "
                     f"{row['top_cause'] or '–'} (`{row['top_id']}`) | {'✓' if row['correct'] else '✗'} | "
                     f"{explained} | {verdict_cell} | {applied} | {dead} | {accuracy} |")
    return "\n".join(lines)


def generic_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | dead before → after | accuracy before → after |", "|---|---|---|"]
    for row in rows:
        fix = row.get("generic_fix")
        if fix:
            lines.append(f"| {row['case']} | {fix['dead_before']} → {fix['dead_after']} | "
                         f"{fix['accuracy_before']} → {fix['accuracy_after']} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def summary_line(rows: list[dict[str, Any]]) -> str:
    causes = [row for row in rows if row["known_cause"]]
    healthy = [row for row in rows if not row["known_cause"]]
    return (f"top-1 cause accuracy {sum(r['correct'] for r in causes)}/{len(causes)}; healthy models ok with no "
            f"warning-level suggestion {sum(r['correct'] for r in healthy)}/{len(healthy)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("ci", "bench"), default="bench")
    parser.add_argument("--cases", nargs="*", default=None, help="only these cases (names from the zoo)")
    parser.add_argument("--no-fix", action="store_true", help="skip the fix proof")
    parser.add_argument("--label", default="after", help="which results block to write (before / after)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="also train every recipe on this many other seeds (data and initial weights) and "
                             "report top-1 over them")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    names = args.cases or [*zoo.CASES, SAMPLE]
    rows = [run_case(name, args.size, fix=not args.no_fix) for name in names]
    seeds = {name: [run_case(name, args.size, fix=False, seed=seed)["correct"] for seed in range(1, args.seeds)]
             for name in names if name != SAMPLE} if args.seeds > 1 else {}
    elapsed = time.perf_counter() - started
    body = (f"`python benchmarks/diagnosis.py --size {args.size}` (torch {torch.__version__}, 1 thread, "
            f"{elapsed:.0f} s). {summary_line(rows)}.\n\n{table(rows)}")
    if seeds:
        correct = sum(sum(found) for found in seeds.values())
        total = sum(len(found) for found in seeds.values())
        body += (f"\n\nThe same recipes on {args.seeds - 1} other seed(s) each (other data and initial weights): "
                 f"{correct} of {total} correct (top-1 cause, or ok for healthy models):\n\n"
                 "| scenario | correct |\n|---|---|\n"
                 + "\n".join(f"| {name} | {sum(found)}/{len(found)} |" for name, found in seeds.items()))
        for row in rows:
            if row["case"] in seeds:
                row["other_seeds_correct"] = seeds[row["case"]]
    generic = generic_table(rows)
    if generic:
        body += ("\n\nThe generic advice for the same models (the `dead-share` card's code: swap the ReLUs at its "
                 "sites for LeakyReLU), applied and fine-tuned the same way:\n\n" + generic)
    print(body)
    if args.no_write:
        return 0
    JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
    stored = json.loads(JSON_OUT.read_text()) if JSON_OUT.exists() else {}
    stored[args.label] = {"size": args.size, "torch": torch.__version__, "seconds": round(elapsed, 1), "rows": rows}
    JSON_OUT.write_text(json.dumps(stored, indent=1) + "\n", encoding="utf-8")
    begin, end = f"<!-- results:diagnosis:{args.label} -->", f"<!-- /results:diagnosis:{args.label} -->"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text:
        text = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S).sub(lambda _m: block, text)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + f"## {args.label}\n\n{block}\n"
    RESULTS.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
