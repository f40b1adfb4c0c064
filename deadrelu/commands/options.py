"""Options several commands share, declared once: the help panels and the typer option types.

A command that takes ``--html`` or ``--max-dead-ratio`` uses the alias here, so the flag,
its metavar, its panel and its help read the same in every ``--help``. The flags that
describe the model and the data (``deadrelu.Inputs``: ``--arch``, ``--kwarg``, ``--mask``,
``--tokenizer``...) are one list, ``INPUT_FLAGS``: a command decorated with
``@input_flags()`` takes all of them, and receives them as one ``InputFlags``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..judge.overall import FailOn
from ..settings import MAX_LINE_BYTES, FunctionalCapture, InputDtype

if TYPE_CHECKING:
    from ..load.spec import Inputs

#: what ``--help`` groups options under
MODEL, DATA, CAPTURE, THRESHOLDS, GATE, OUTPUT, RUN = "Model", "Data", "Capture", "Thresholds", "Gate", "Output", "Run"

JsonOption = Annotated[Optional[Path], typer.Option("--json", metavar="FILE", rich_help_panel=OUTPUT,
                                                     help="Write the JSON report here ('-' for stdout).")]
HtmlOption = Annotated[Optional[Path], typer.Option("--html", metavar="FILE", rich_help_panel=OUTPUT,
                                                     help="Write a self-contained HTML report here.")]
PngDirOption = Annotated[Optional[Path], typer.Option("--png-dir", metavar="DIR", rich_help_panel=OUTPUT,
                                                      help="Write PNG plots into this folder.")]
OutOption = Annotated[Optional[Path], typer.Option("--out", metavar="DIR", rich_help_panel=OUTPUT,
                                                   help="Write result.json, report.html and plots/*.png into this "
                                                        "folder ('auto': reports/<model-stem>-<timestamp>/).")]
ShowUnitsOption = Annotated[bool, typer.Option("--show-units", rich_help_panel=OUTPUT,
                                               help="List dead/saturated unit indices.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=OUTPUT,
                                           help="Only the verdict and gate lines.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", rich_help_panel=OUTPUT,
                                             help="Every site, and each suggestion's evidence, action and code.")]
DebugOption = Annotated[bool, typer.Option("--debug", rich_help_panel=RUN, help="Show tracebacks.")]
MaxDeadRatioOption = Annotated[Optional[float], typer.Option(
    metavar="RATIO", rich_help_panel=GATE, help="Fail (exit 1) when dead units over all units are above this ratio.")]
MaxLayerDeadRatioOption = Annotated[Optional[float], typer.Option(
    metavar="RATIO", rich_help_panel=GATE, help="Fail (exit 1) when any site's dead ratio is above this.")]
FailOnOption = Annotated[FailOn, typer.Option(
    "--fail-on", rich_help_panel=GATE, show_default=True,
    help="Exit 1 when the verdict is FAIL (fail) or WARN or FAIL (warn); never: only a failed gate exits 1.")]
JunitOption = Annotated[Optional[Path], typer.Option(
    "--junit", metavar="FILE", rich_help_panel=OUTPUT,
    help="Write JUnit XML here: one testcase per site, a failure for each site the gate fails.")]
MarkdownOption = Annotated[Optional[Path], typer.Option(
    "--markdown", metavar="FILE", rich_help_panel=OUTPUT,
    help="Write a short Markdown summary here (appended when it is $GITHUB_STEP_SUMMARY).")]

BatchSizeOption = Annotated[Optional[int], typer.Option(
    metavar="N", rich_help_panel=RUN, show_default="256", help="Samples per forward pass.")]
LimitOption = Annotated[Optional[int], typer.Option(
    metavar="N", rich_help_panel=DATA, show_default="all", help="Scan at most N samples.")]
DeviceOption = Annotated[str, typer.Option(metavar="DEVICE", rich_help_panel=RUN, show_default=True,
                                           help="auto, cpu, cuda, cuda:N or mps.")]
DeadThresholdOption = Annotated[Optional[float], typer.Option(
    metavar="RATE", rich_help_panel=THRESHOLDS, show_default="0", help="Dead when the active rate is <= this.")]
TauOption = Annotated[Optional[float], typer.Option(
    metavar="TAU", rich_help_panel=THRESHOLDS, show_default="0.1", help="ReDo dormancy threshold.")]
LayersOption = Annotated[Optional[list[str]], typer.Option(
    "--layers", metavar="GLOB", rich_help_panel=CAPTURE, help="Only sites matching this glob (repeatable).")]
ExcludeOption = Annotated[Optional[list[str]], typer.Option(
    "--exclude", metavar="GLOB", rich_help_panel=CAPTURE, help="Skip sites matching this glob (repeatable).")]
FunctionalOption = Annotated[Optional[FunctionalCapture], typer.Option(
    "--functional", metavar="WHEN", rich_help_panel=CAPTURE, show_default="auto",
    help="Capture F.relu-style calls in forward(): auto (on the first batch; after it only inside the modules "
         "whose forward made one, off if none did; the coverage says which), always, or off.")]
#: ``--no-functional``, kept from before ``--functional WHEN``: the same as ``--functional off``.
NoFunctionalOption = Annotated[bool, typer.Option("--no-functional", hidden=True, rich_help_panel=CAPTURE,
                                                  help="Same as --functional off.")]
ConfigOption = Annotated[Optional[Path], typer.Option(
    metavar="FILE", rich_help_panel=RUN,
    help="TOML config (see configs/default.toml): settings, gate, and the model and data in [inputs]; flags win.")]

# -- the inputs: the model, the data, and how a batch feeds the model ------------------------------

ModelArgument = Annotated[Optional[Path], typer.Argument(
    metavar="MODEL", show_default=False,
    help="Model file: a state_dict/checkpoint or .safetensors (with --arch), TorchScript, a torch.export .pt2, a "
         "pickled nn.Module, or a Hugging Face model folder (config.json + weights). Leave out with --model.")]
DataArgument = Annotated[Optional[Path], typer.Argument(
    metavar="DATA", show_default=False,
    help="Data file: .npy, .npz, .pt/.pth, .csv/.tsv, .parquet, or text (.txt/.jsonl) with a tokenizer; first axis = "
         "samples. Leave out with --data.")]

#: Every flag of ``deadrelu.Inputs`` but MODEL and DATA: ``(field, type, default, declaration)``.
#: A default of None (False for a switch) means "not given": a config file's ``[inputs]`` decides.
INPUT_FLAGS: list[tuple[str, Any, Any, Any]] = [
    ("arch", Optional[str], None, typer.Option(
        metavar="SPEC", rich_help_panel=MODEL,
        help="Architecture for a state_dict: package.module:Factory or path/to/file.py:Factory.")),
    ("arch_kwargs", Optional[str], None, typer.Option(
        metavar="JSON", rich_help_panel=MODEL, help="Keyword arguments for --arch / --model, as JSON.")),
    ("model_factory", Optional[str], None, typer.Option(
        "--model", metavar="SPEC", rich_help_panel=MODEL,
        help="Build the model with a Python factory (package.module:build or file.py:build); replaces MODEL.")),
    ("weights", Optional[Path], None, typer.Option(
        metavar="FILE", rich_help_panel=MODEL,
        help="state_dict / checkpoint / .safetensors to load into the --model factory's model.")),
    ("allow_pickle", bool, False, typer.Option(
        "--allow-pickle", rich_help_panel=MODEL,
        help="Allow the full unpickler, which runs code from the model file. Only for files you trust.")),
    ("hf_class", Optional[str], None, typer.Option(
        "--hf-class", metavar="NAME", rich_help_panel=MODEL, show_default="AutoModel",
        help="transformers class that loads a Hugging Face folder (AutoModelForCausalLM, T5EncoderModel...).")),
    ("allow_remote_code", bool, False, typer.Option(
        "--allow-remote-code", rich_help_panel=MODEL,
        help="Let a Hugging Face folder run its own Python code (trust_remote_code). Only for folders you trust.")),
    ("imports", Optional[list[Path]], None, typer.Option(
        "--import", metavar="FILE", rich_help_panel=MODEL,
        help="Import this Python file before unpickling, so the classes a pickled model names are found "
             "(repeatable).")),
    ("data_factory", Optional[str], None, typer.Option(
        "--data", metavar="SPEC", rich_help_panel=DATA,
        help="Data from Python (package.module:make or file.py:make) returning a tensor, ndarray, dict, Dataset or "
             "DataLoader; replaces DATA.")),
    ("key", Optional[list[str]], None, typer.Option(
        metavar="NAME", rich_help_panel=DATA,
        help="Array in an .npz, a dict .pt or a --data dict; repeat for a model with several inputs.")),
    ("input_key", Optional[list[str]], None, typer.Option(
        metavar="NAME", rich_help_panel=DATA,
        help="Entry of dict batches (or position in tuple batches) that is the model input; repeatable.")),
    ("kwargs", Optional[list[str]], None, typer.Option(
        "--kwarg", metavar="NAME", rich_help_panel=DATA,
        help="Feed the array / batch entry NAME as the keyword argument NAME= (input_ids, attention_mask...); "
             "repeatable.")),
    ("mask", Optional[str], None, typer.Option(
        "--mask", metavar="NAME", rich_help_panel=DATA,
        help="(N, L) padding mask (1 = real token, 0 = padding): padded positions are left out of the statistics. "
             "Fed to the model only when also a --kwarg.")),
    ("input_dtype", Optional[InputDtype], None, typer.Option(
        "--input-dtype", rich_help_panel=DATA, show_default="auto",
        help="Integer data: auto keeps token ids as integers and casts what a floating layer rejects (uint8 "
             "images); keep or float force either.")),
    ("tokenizer", Optional[Path], None, typer.Option(
        "--tokenizer", metavar="DIR", rich_help_panel=DATA,
        help="Tokenizer folder for text DATA (default: the Hugging Face model folder's own).")),
    ("text_field", Optional[str], None, typer.Option(
        "--text-field", metavar="NAME", rich_help_panel=DATA, show_default="text",
        help="Field of each .jsonl object that holds the text.")),
    ("max_length", Optional[int], None, typer.Option(
        "--max-length", metavar="N", rich_help_panel=DATA, show_default="512",
        help="Truncate text examples to N tokens.")),
    ("max_line_bytes", Optional[int], None, typer.Option(
        "--max-line-bytes", metavar="N", rich_help_panel=DATA, show_default=str(MAX_LINE_BYTES),
        help="Refuse a text line longer than N bytes (tokenizing takes ~200x a line's size in memory).")),
    ("columns", Optional[list[str]], None, typer.Option(
        "--columns", metavar="A,B", rich_help_panel=DATA,
        help="Table columns to use as features, in order (default: every numeric column).")),
    ("shuffle_seed", Optional[int], None, typer.Option(
        metavar="SEED", rich_help_panel=DATA,
        help="With --limit, scan a random subset drawn with this seed instead of the first N.")),
    ("scale", Optional[float], None, typer.Option(
        metavar="X", rich_help_panel=DATA, help="Multiply inputs by this (e.g. 0.00392 for uint8 images).")),
]


class InputFlags:
    """The input flags a command was given, until they become one ``deadrelu.Inputs``.

    Args:
        values: flag values by field name (``model`` and ``data`` are the positionals, when the
            command takes them).
    """

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def inputs(self, config: Path | None = None, **given: Any) -> Inputs:
        """The inputs: a config file's ``[inputs]``, then the flags (and ``given``) over it.

        MODEL and DATA are assigned as ``commands.common.positionals`` says (MODEL unless
        ``--model``, DATA unless ``--data``), unless the config names the model and data.

        Raises:
            ConfigError: positionals that do not fit the options, a bad flag value, a bad config.
        """
        from ..load.spec import Inputs
        from .common import positionals

        base = Inputs.from_config(config) if config is not None else Inputs()
        values = {name: None if value is False else value for name, value in self.values.items()}
        if "model" in values:
            model, data = values.pop("model"), values.pop("data")
            named_there = (base.model or base.model_factory) is not None and (base.data or base.data_factory) is not None
            if model is not None or data is not None or not named_there:
                values["model"], values["data"] = positionals(model, data, values.get("model_factory"),
                                                              values.get("data_factory"))
        return base.with_values(**values, **given)


def input_flags(positionals: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command every flag of the inputs (``INPUT_FLAGS``, and MODEL DATA when ``positionals``),
    in place of its ``inputs`` parameter, which receives them as one ``InputFlags``.

    Returns:
        The decorator.
    """
    added = [("model", ModelArgument, None), ("data", DataArgument, None)] if positionals else []
    added += [(name, Annotated[kind, declaration], default) for name, kind, default, declaration in INPUT_FLAGS]
    names = [name for name, _, _ in added]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        parameters = []
        for parameter in inspect.signature(command, eval_str=True).parameters.values():
            if parameter.name == "inputs":
                parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                                 annotation=annotation) for name, annotation, default in added]
            else:
                parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def with_inputs(**values: Any) -> Any:
            flags = InputFlags({name: values.pop(name) for name in names})
            return command(inputs=flags, **values)

        with_inputs.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        with_inputs.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_inputs

    return decorate


__all__ = ["MODEL", "DATA", "CAPTURE", "THRESHOLDS", "GATE", "OUTPUT", "RUN", "JsonOption", "HtmlOption",
           "PngDirOption", "OutOption", "ShowUnitsOption", "QuietOption", "VerboseOption", "DebugOption",
           "MaxDeadRatioOption", "MaxLayerDeadRatioOption", "FailOnOption", "FailOn", "JunitOption", "MarkdownOption",
           "BatchSizeOption", "LimitOption", "DeviceOption", "DeadThresholdOption", "TauOption", "LayersOption",
           "ExcludeOption", "ConfigOption", "ModelArgument", "DataArgument", "INPUT_FLAGS", "InputFlags",
           "input_flags"]

# -- metrics loggers (deadrelu.loggers) --------------------------------------------------------
TensorboardOption = Annotated[Optional[Path], typer.Option(
    "--tensorboard", metavar="DIR", rich_help_panel=OUTPUT,
    help="Also write the scan into this TensorBoard log folder (scalars, active-rate histograms, heat map) as "
         "one step; needs the tensorboard extra.")]
MlflowOption = Annotated[bool, typer.Option(
    "--mlflow", rich_help_panel=OUTPUT,
    help="Also log the scan to MLflow (the active run, or a new one; MLFLOW_TRACKING_URI), with the HTML "
         "report and JSON as artifacts; needs the mlflow extra.")]
WandbOption = Annotated[bool, typer.Option(
    "--wandb", rich_help_panel=OUTPUT,
    help="Also log the scan to Weights & Biases (a new run in project deadrelu; WANDB_MODE=offline works); "
         "needs the wandb extra.")]
StepOption = Annotated[int, typer.Option(
    "--step", metavar="N", rich_help_panel=OUTPUT, help="The training step to log the scan at.")]
__all__ += ["TensorboardOption", "MlflowOption", "WandbOption", "StepOption"]
