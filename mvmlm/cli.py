"""The ``mvmlm`` umbrella command: ``mvmlm <command> [--config FILE] [key=value ...]``.

Each command is a module exposing ``main(argv)``; it is imported only when run, so ``mvmlm --help`` is instant.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from mvmlm.errors import InputError

__all__ = ["COMMANDS", "main", "run_command"]

#: command -> (module with ``main(argv)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth-data": ("mvmlm.data.synthetic", "write synthetic mammography exams in a dataset's native format"),
    "tables": ("mvmlm.data.sources", "read a native dataset into the canonical image table (parquet)"),
    "preprocess": ("mvmlm.data.preprocess", "decode, crop and resize images into the 16-bit image cache"),
    "reports": ("report_synthesis.run", "write synthetic per-breast radiology reports from a canonical table"),
    "pretrain": ("pretrain.train", "MV-CLIP pretraining on breasts + reports (also `accelerate launch -m pretrain`)"),
    "probe": (
        "downstream.linear_probe",
        "linear probe of frozen encoders (checkpoint, random init, ImageNet) at fractions",
    ),
    "finetune": ("downstream.finetune", "fine-tune an image tower + linear head at label fractions"),
    "zeroshot": ("downstream.zeroshot", "zero-shot breast classification with class prompt ensembles"),
    "multiview": ("downstream.multiview", "four-view BI-RADS + malignancy classifier and its grid (`multiview grid`)"),
    "coattention": ("downstream.coattention", "co-attention of images and metadata text vs image/text-only baselines"),
    "risk": ("downstream.risk", "breast-cancer risk: Coxnet and additive-hazard head; C-index, 2y/5y AUC"),
    "dual-stream": (
        "downstream.dual_stream",
        "Mammo-Mamba dual-stream (lesion crop + whole image) benign vs malignant",
    ),
    "info": ("mvmlm.info", "package versions and whether CUDA, mamba-ssm kernels and vLLM are usable"),
    "demo": ("mvmlm.demo", "run the toolkit end to end on built-in synthetic data"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    return (
        "usage: mvmlm <command> [--config FILE] [key=value ...]\n\n"
        f"commands:\n{rows}\n\n`mvmlm <command> --help` explains a command and lists its config keys."
    )


def run_command(entry: Callable[[list[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main`` turning user errors (bad config or input, missing files) into ``error: ...``, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "openjpeg"):  # per-checkpoint / per-tile INFO lines drown the progress
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        entry(None if argv is None else list(argv))
    except (InputError, FileNotFoundError) as exc:  # ConfigError is an InputError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its command module."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"mvmlm: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"mvmlm {name}", *rest]
    return run_command(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
