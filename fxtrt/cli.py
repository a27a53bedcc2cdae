"""The ``fxtrt`` command: ``fxtrt compile SPEC --input 1x3x224x224 --batch 1:8:32``."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any, Sequence

import torch

from fxtrt import __version__
from fxtrt.errors import ConfigError, FxtrtError
from fxtrt.settings import DEFAULT_BATCH, PRECISIONS, TARGETS, Settings
from fxtrt.termination import SIGTERM_STATUS, Terminated, sigterm_raises

SIGINT_STATUS = 128 + signal.SIGINT  # 130, the shell's status for a process ended by Ctrl-C


def _ints(text: str, sep: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(sep))
    except ValueError:
        raise ConfigError(f"{what}: cannot read {text!r}") from None


def parse_batch(text: str) -> tuple[int, int, int] | None:
    if text.lower() in ("none", "static"):
        return None
    parts = _ints(text, ":", "--batch")
    if len(parts) != 3:
        raise ConfigError(f"--batch {text!r}: expected MIN:OPT:MAX, e.g. 1:8:32, or 'none'")
    return parts  # type: ignore[return-value]


def parse_buckets(text: str) -> tuple[int, ...]:
    """``1,4,8,16`` -> (1, 4, 8, 16); compile() checks they are sorted, unique and positive."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 1,4,8,16, got {text!r}") from None


def parse_batch_dims(text: str | None) -> tuple[int | None, ...] | None:
    if text is None:
        return None
    return tuple(None if p.strip().lower() in ("none", "-", "") else int(p) for p in text.split(","))


def parse_dynamic(items: Sequence[str]) -> dict[int | str, dict[int, Any]] | None:
    """``INPUT:DIM=[NAME:]MIN:OPT:MAX[:STEP]``, e.g. ``0:2=320:640:1280:32``, ``0:1=seq:1:128:512`` or
    ``input_ids:1=seq:1:128:512`` (an input by name)."""
    out: dict[int | str, dict[int, Any]] = {}
    usage = "expected INPUT:DIM=[NAME:]MIN:OPT:MAX[:STEP], e.g. 0:1=20:1000:2000 or 0:2=320:640:1280:32"
    for item in items:
        where, eq, rng = item.partition("=")
        parts = rng.split(":")
        name = [parts.pop(0)] if parts and parts[0].isidentifier() else []
        try:
            i_text, d_text = where.split(":")
            i: int | str = i_text if i_text.isidentifier() else int(i_text)
            d = int(d_text)
            numbers = tuple(int(x) for x in parts)
        except ValueError:
            raise ConfigError(f"--dynamic {item!r}: {usage}") from None
        if not eq or len(numbers) not in (3, 4):
            raise ConfigError(f"--dynamic {item!r}: {usage}")
        out.setdefault(i, {})[d] = (*name, *numbers)
    return out or None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default (or "required"), unless it already says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "default:" in action.help:
            return action.help
        if action.required and action.option_strings:
            return f"{action.help} (required)" if action.help else "(required)"
        return super()._get_help_string(action)


def _settings_defaults() -> dict[str, Any]:
    """compile()'s defaults, from where they are written once: the Settings dataclass."""
    return {f.name: f.default for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING}


SPEC_HELP = ("the model, built offline with random weights: torchvision:NAME, timm:NAME[:JSON kwargs], "
             "transformers:CLASS[:JSON config overrides] (e.g. transformers:BertModel:'{\"num_hidden_layers\":2}'), "
             "ultralytics:FILE.yaml (e.g. yolov8n.yaml), package.module:factory or path/to/file.py:factory")


def _model_arguments(p: argparse.ArgumentParser, inputs: tuple[str, str], dynamic: tuple[str, str]) -> None:
    """What compile and explain both take: the model, its example, its batch and dynamic dims
    (``inputs`` and ``dynamic``: each option's metavar and help)."""
    p.add_argument("spec", help=SPEC_HELP)
    p.add_argument("--input", action="append", required=True, metavar=inputs[0], help=inputs[1])
    p.add_argument("--batch", help="MIN:OPT:MAX batch sizes to serve, or 'none' (default: "
                   + ":".join(map(str, DEFAULT_BATCH)) + ")")
    p.add_argument("--batch-dims", help="per input, the batch dim or 'none', e.g. 1,1 (default: 0 for every input)")
    p.add_argument("--dynamic", action="append", default=[], metavar=dynamic[0], help=dynamic[1])
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights and example inputs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxtrt", description="PyTorch → dynamic-batch ONNX that matches the original.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    default = _settings_defaults()

    c = sub.add_parser("compile", help="compile a model to ONNX and verify it", formatter_class=_HelpFormatter)
    _model_arguments(c, ("[NAME=]SHAPE[:DTYPE]", "an example input, e.g. 1x3x224x224 or 1x16:int64; repeat for several "
                         "inputs; NAME= passes it by keyword (input_ids=1x16:int64), and an int *mask is all ones"),
                     ("I:D=[NAME:]MIN:OPT:MAX[:STEP]",
                      "another dynamic dim, e.g. 0:1=20:1000:2000, or 0:2=320:640:1280:32 for multiples of 32 "
                      "(repeatable; dims are independent unless given one NAME, e.g. 0:2=side:320:640:1280:32 and "
                      "0:3=side:320:640:1280:32 for H = W; default: none)"))
    c.add_argument("--out", help="artifact directory; files an earlier compile wrote there are replaced "
                                  "(default: a new temporary directory, kept)")
    c.add_argument("--opset", type=int, default=default["opset"], help="ONNX opset")
    c.add_argument("--atol", type=float, default=default["atol"], help="absolute tolerance of the check")
    c.add_argument("--rtol", type=float, default=default["rtol"], help="relative tolerance of the check")
    c.add_argument("--no-verify", action="store_true", help="skip the check against the original (not recommended)")
    c.add_argument("--debug-dir", help="dump the graph after every pass here, and check each pass numerically "
                                        "(default: none, no dumps)")
    c.add_argument("--trace-divergence", action="store_true",
                   help="compare every ONNX intermediate with the FX graph, even when verification passes")
    c.add_argument("--target", choices=TARGETS, default=default["target"],
                   help="tensorrt: also plan TensorRT engines and write build_engines.sh (built here only with "
                        "TensorRT and a GPU)")
    c.add_argument("--precision", choices=PRECISIONS, default=default["precision"],
                   help="fp16: also write model_fp16.onnx, repaired and verified at --fp16-atol/--fp16-rtol")
    c.add_argument("--buckets", type=parse_buckets, metavar="B1,B2,...",
                   help="one static-batch model per size, e.g. 1,4,8,16, served as one model (replaces --batch; "
                        "default: none, one dynamic-batch model)")
    c.add_argument("--keep-dynamic", default=default["keep_dynamic"], metavar="DIM",
                   help="with --target tensorrt and several dynamic dims, the one that stays dynamic")
    c.add_argument("--strict", action="store_true", default=default["strict"],
                   help="with --target tensorrt, fail when TensorRT's ONNX parser would not take every node")
    c.add_argument("--fp16-atol", type=float, default=default["fp16_atol"],
                   help="absolute tolerance of the fp16 model's check")
    c.add_argument("--fp16-rtol", type=float, default=default["fp16_rtol"],
                   help="relative tolerance of the fp16 model's check")
    _explain_parser(sub, default)
    sub.add_parser("passes", help="list the registered passes in the order they run")
    return parser


def _explain_parser(sub: Any, default: dict[str, Any]) -> None:
    e = sub.add_parser("explain", help="list what would break a dynamic export, with source lines; emit nothing",
                       formatter_class=_HelpFormatter)
    _model_arguments(e, ("SHAPE[:DTYPE]", "an example input, e.g. 1x3x224x224 or 1x16:int64; repeat for several inputs"),
                     ("I:D=MIN:OPT:MAX", "another dynamic dim, e.g. 0:1=20:1000:2000 (repeatable; default: none)"))
    e.add_argument("--target", choices=TARGETS, default=default["target"],
                   help="tensorrt: also emit the ONNX model and check every node against TensorRT 10/11's ONNX "
                        "parser tables (coverage, unsupported ops and their lines)")
    e.add_argument("--opset", type=int, default=default["opset"], help="ONNX opset (with --target tensorrt)")
    e.add_argument("--json", action="store_true", help="machine-readable output")


def _batch(args: argparse.Namespace) -> tuple[int, int, int] | None:
    """``--batch`` as given, or compile()'s default when it was not given (which ``--buckets`` then replaces)."""
    return DEFAULT_BATCH if args.batch is None else parse_batch(args.batch)


def _load(args: argparse.Namespace) -> tuple[torch.nn.Module, Any]:
    """The model and its example: a tuple, or a dict when the inputs are named (``input_ids=1x16:int64``)."""
    from fxtrt.zoo import load_model, parse_input

    torch.manual_seed(args.seed)
    model = load_model(args.spec)
    gen = torch.Generator().manual_seed(args.seed)
    named = [t.partition("=") for t in args.input]
    if not any(eq for _, eq, _ in named):
        return model, tuple(parse_input(t, gen) for t in args.input)
    if not all(eq and name.isidentifier() for name, eq, _ in named):
        raise ConfigError("--input: name every input (NAME=SHAPE[:DTYPE]) or none of them")
    example = {}
    for name, _, spec in named:
        t = parse_input(spec, gen)
        # a random mask would hide most tokens; all ones is the valid mask of a full batch
        example[name] = torch.ones_like(t) if name.endswith("mask") and not t.is_floating_point() else t
    return model, example


def _explain(args: argparse.Namespace) -> int:
    from fxtrt.explain import explain

    model, inputs = _load(args)
    result = explain(model, inputs, batch=_batch(args), batch_dims=parse_batch_dims(args.batch_dims),
                     dynamic=parse_dynamic(args.dynamic), target=args.target, opset=args.opset)
    print(result.to_json() if args.json else result.to_text())
    return 0


def _passes(args: argparse.Namespace) -> int:
    from fxtrt.passes import REQUIRED, describe

    for i, (name, doc) in enumerate(describe(), start=1):
        tag = " (always runs)" if name in REQUIRED else ""
        print(f"{i}. {name}{tag}: {doc}")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from fxtrt.api import compile as fxtrt_compile

    model, inputs = _load(args)
    # compile() removes a temp dir of its own with the model; the command's artifacts outlive it.
    out = args.out or tempfile.mkdtemp(prefix="fxtrt-")
    try:
        compiled = fxtrt_compile(
            model, inputs, batch=_batch(args), batch_dims=parse_batch_dims(args.batch_dims),
            dynamic=parse_dynamic(args.dynamic), out_dir=out, opset=args.opset,
            atol=args.atol, rtol=args.rtol, verify=not args.no_verify,
            debug_dir=args.debug_dir, trace_divergence=args.trace_divergence,
            target=args.target, precision=args.precision, buckets=args.buckets, keep_dynamic=args.keep_dynamic,
            fp16_atol=args.fp16_atol, fp16_rtol=args.fp16_rtol, strict=args.strict,
        )
    except BaseException:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(compiled.report.to_text())
    print(f"\nartifacts written to {compiled.onnx_path.parent}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("fxtrt").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        with sigterm_raises():
            if args.command == "compile":
                return _compile(args)
            if args.command == "explain":
                return _explain(args)
            if args.command == "passes":
                return _passes(args)
    except FxtrtError as exc:
        print(f"fxtrt: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        _stopped(f"fxtrt: {args.command} interrupted (SIGINT); nothing was written", SIGINT_STATUS)
    except Terminated:
        _stopped(f"fxtrt: {args.command} terminated (SIGTERM); nothing was written", SIGTERM_STATUS)
    return 0


def _stopped(line: str, status: int) -> None:
    """One line, then exit at once: the staging directory is already gone (the exception unwound
    compile), and the interpreter's own shutdown would add lines of its own (an extension
    interrupted mid-call reports its leaked objects on stderr)."""
    print(line, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
