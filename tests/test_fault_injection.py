"""Fault injection: ``preprocess`` and ``reports`` killed at several points (SIGKILL, SIGTERM) and run again end with
exactly the outputs of an uninterrupted run; a killed ``preprocess`` leaves no worker processes behind. The trainers
``pretrain`` and ``multiview`` killed (SIGKILL) mid-epoch, right after a checkpoint, during a checkpoint save and after
the last checkpoint, or stopped by SIGTERM (mid-epoch, during a save, after the last checkpoint: the state of that step
is saved, exit code 143), then resumed, end with the uninterrupted run's train_log.jsonl, val_log.jsonl, metrics.json
and weights; a refused resume leaves every file of the run byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from mvmlm import cli
from mvmlm.config import ConfigError
from mvmlm.data import schema
from mvmlm.data.preprocess import FAILURES_FILE, TABLE_FILE
from mvmlm.data.preprocess_command import main as preprocess
from mvmlm.data.synthetic.truth import sample_exams
from mvmlm.training import checkpoint_dirs
from report_synthesis import read_corpus
from report_synthesis.backends import register_backend
from report_synthesis.backends.template import TemplateBackend
from report_synthesis.run import main as reports

REPO = Path(__file__).resolve().parents[1]

SLOW_PREPROCESS = """
import sys, time
import mvmlm.data.dicom as dicom
from mvmlm.data.preprocess_command import main
read = dicom.read_mammogram
dicom.read_mammogram = lambda path, **kw: (time.sleep(0.1), read(path, **kw))[1]
main(sys.argv[1:])
"""

SLOW_REPORTS = """
import sys, time
from report_synthesis.backends import register_backend
from report_synthesis.backends.template import TemplateBackend
from report_synthesis.run import main

@register_backend("slow")
class Slow(TemplateBackend):
    name = "slow"
    def generate(self, requests):
        time.sleep(0.05 * len(requests))
        return super().generate(requests)

main(sys.argv[1:])
"""


@register_backend("slow")
class Slow(TemplateBackend):
    """The killed runs' backend (the subprocess's own is slowed down): template text under another name."""

    name = "slow"


def _kill_when(script: str, args: list[str], ready: Callable[[], bool], sig: int) -> list[int]:
    """Start ``script args`` in a new process and send it ``sig`` once ``ready()``; the pids of its children."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    children = [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
    os.kill(proc.pid, sig)  # the parent only: its workers must follow it by themselves
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -sig, stderr.decode()[-2000:]
    return children


def _gone(pids: list[int], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def preprocess_input(synthetic_dataset, tmp_path_factory) -> tuple[list[str], Path]:
    """Preprocess arguments (without --out) and the uninterrupted run's cache folder."""
    root, truth = synthetic_dataset("vindr")
    work = tmp_path_factory.mktemp("fault_preprocess")
    table = schema.write_table(truth, work / "table.parquet")
    args = [f"--table={table}", f"--root={root}", "height=48", "width=32", "progress=false", "--workers=2"]
    return args, Path(preprocess([*args, f"--out={work / 'reference'}"])["folder"])


def _same_cache(folder: Path, reference: Path) -> None:
    files = sorted(p.relative_to(folder) for p in folder.rglob("*.npy"))
    assert files == sorted(p.relative_to(reference) for p in reference.rglob("*.npy")) and files
    for rel in files:
        assert np.array_equal(np.load(folder / rel), np.load(reference / rel)), rel
    pd.testing.assert_frame_equal(schema.read_table(folder / TABLE_FILE), schema.read_table(reference / TABLE_FILE))
    assert (folder / FAILURES_FILE).read_text() == (reference / FAILURES_FILE).read_text()
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize(("sig", "after"), [(signal.SIGKILL, 2), (signal.SIGKILL, 20), (signal.SIGTERM, 8)])
def test_preprocess_killed_and_rerun_equals_an_uninterrupted_run(preprocess_input, tmp_path, sig, after):
    args, reference = preprocess_input
    out = tmp_path / "cache"
    ready = lambda: len(list(out.rglob("*.npy"))) >= after  # noqa: E731
    workers = _kill_when(SLOW_PREPROCESS, [*args, f"--out={out}"], ready, sig)
    assert len(workers) == 2 and _gone(workers), "the workers outlived their killed parent"
    assert after <= len(list(out.rglob("*.npy"))) < len(list(reference.rglob("*.npy")))
    _same_cache(Path(preprocess([*args, f"--out={out}"])["folder"]), reference)


@pytest.fixture(scope="module")
def reports_input(tmp_path_factory) -> tuple[list[str], pd.DataFrame]:
    """Report arguments (without out) and the uninterrupted run's corpus."""
    work = tmp_path_factory.mktemp("fault_reports")
    table = schema.write_table(sample_exams(12, seed=3), work / "table.parquet")
    args = [f"table={table}", "progress=false", "variants=2", "chunk_size=4", "backend.name=slow"]
    reports([*args, f"out={work / 'reference'}"])
    return args, read_corpus(work / "reference")


def _rows(corpus: pd.DataFrame) -> pd.DataFrame:
    return corpus.sort_values("id").reset_index(drop=True)


@pytest.mark.parametrize(("sig", "parts"), [(signal.SIGKILL, 1), (signal.SIGKILL, 5), (signal.SIGTERM, 2)])
def test_reports_killed_and_rerun_equal_an_uninterrupted_run(reports_input, tmp_path, sig, parts):
    args, reference = reports_input
    out = tmp_path / "corpus"
    ready = lambda: len(list((out / "parts").glob("part-*.parquet"))) >= parts  # noqa: E731
    _kill_when(SLOW_REPORTS, [*args, f"out={out}"], ready, sig)
    assert parts * 4 <= len(read_corpus(out)) < len(reference)
    with pytest.raises(ConfigError, match="seed"):  # the manifest written before the first part guards the settings
        reports([*args, f"out={out}", "seed=1"])
    reports([*args, f"out={out}"])
    pd.testing.assert_frame_equal(_rows(read_corpus(out)), _rows(reference))


# ------------------------------------------------------------------------------------------------ trainers
def _stalling_trainer(argv: list[str], stall: str) -> None:
    """A forked child: ``mvmlm argv`` with every optimizer step slowed down and a stall of SECONDS at one checkpoint
    save (``saving:STEP:SECONDS``: its state written, the folder not yet renamed; ``saved:STEP:SECONDS``: complete)."""
    from accelerate import Accelerator

    import mvmlm.training.loop as loop

    phase, at, seconds = (stall.split(":") + ["0", "0"])[:3]
    step, save_state, save_checkpoint = loop.Loop._optimizer_step, Accelerator.save_state, loop.save_checkpoint

    def slow_step(self, batches):
        time.sleep(0.05)
        return step(self, batches)

    def save_state_then_stall(self, output_dir=None, **kwargs):
        written = save_state(self, output_dir, **kwargs)
        if phase == "saving" and str(output_dir).endswith(f"step_{int(at):08d}"):
            time.sleep(float(seconds))
        return written

    def save_checkpoint_then_stall(accelerator, root, step, *args):
        saved = save_checkpoint(accelerator, root, step, *args)
        if phase == "saved" and step == int(at):
            time.sleep(float(seconds))
        return saved

    loop.Loop._optimizer_step, loop.save_checkpoint = slow_step, save_checkpoint_then_stall
    Accelerator.save_state = save_state_then_stall
    os._exit(cli.main(argv))


def _steps_logged(out: Path) -> int:
    log = out / "train_log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _saved(out: Path) -> list[int]:
    return [step for step, _ in checkpoint_dirs(out / "checkpoints")]


def _saving(out: Path) -> bool:
    return (out / "checkpoints/.tmp-step_00000004/model.safetensors").is_file()


#: name -> (signal, where the run stalls: saving|saved:STEP:SECONDS, when to send the signal, the newest state it leaves
#: where known); both trainers run 12 optimizer steps and save states every 2. A SIGKILLed run leaves the last state
#: saved; a SIGTERMed one saves the state of the step it was in (also the last one) and exits with 143.
KILL_POINTS = {
    "mid-epoch": (signal.SIGKILL, "-", lambda out: _steps_logged(out) >= 5, None),
    "right-after-a-checkpoint": (signal.SIGKILL, "saved:4:60", lambda out: 4 in _saved(out), 4),
    "during-a-checkpoint-save": (signal.SIGKILL, "saving:4:60", _saving, 2),
    "after-the-last-checkpoint": (signal.SIGKILL, "saved:12:60", lambda out: 12 in _saved(out), 12),
    "sigterm-mid-epoch": (signal.SIGTERM, "-", lambda out: _steps_logged(out) >= 7, None),
    "sigterm-during-a-checkpoint-save": (signal.SIGTERM, "saving:4:1", _saving, 4),
    "sigterm-after-the-last-checkpoint": (signal.SIGTERM, "saved:12:1", lambda out: 12 in _saved(out), 12),
}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON tree as ``{"a/b/0": leaf}``."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}/").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}{i}/").items()}
    return {prefix.rstrip("/"): tree}


def _same_json(a: Any, b: Any, ignore: tuple[str, ...] = ()) -> None:
    flat_a, flat_b = ({k: v for k, v in _flat(t).items() if k.split("/")[0] not in ignore} for t in (a, b))
    assert sorted(flat_a) == sorted(flat_b)
    for key, value in flat_a.items():
        if isinstance(value, float) and not isinstance(flat_b[key], bool):
            assert flat_b[key] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True), key
        else:
            assert flat_b[key] == value, key


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_run(out: Path, reference: Path, weights: str) -> None:
    """The outputs of a killed and resumed run equal the uninterrupted run's."""
    from safetensors.torch import load_file

    assert [r["step"] for r in _jsonl(reference / "train_log.jsonl")] == list(range(1, 13))
    for name in ("train_log.jsonl", "val_log.jsonl"):
        _same_json(_jsonl(out / name), _jsonl(reference / name))
    ignore = ("resumed_from_step", "model_dir")
    _same_json(
        json.loads((out / "metrics.json").read_text()), json.loads((reference / "metrics.json").read_text()), ignore
    )
    got, expected = load_file(str(out / weights)), load_file(str(reference / weights))
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.allclose(got[name], tensor, rtol=1e-5, atol=1e-6), name
    assert not list((out / "checkpoints").glob(".tmp-*"))


def _kill_trainer(argv: list[str], out: Path, point: str) -> list[int]:
    """Run ``mvmlm argv`` in a forked child (the imports are done), kill it at ``point``; the checkpoints it left."""
    sig, stall, ready, newest = KILL_POINTS[point]
    child = multiprocessing.get_context("fork").Process(target=_stalling_trainer, args=(argv, stall))
    child.start()
    deadline = time.monotonic() + 60
    while not ready(out) and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, sig)
    child.join(30)
    graceful = sig == signal.SIGTERM
    assert child.exitcode == (128 + sig if graceful else -sig), f"the run ended with {child.exitcode} at {point}"
    assert not (out / "metrics.json").exists()
    saved = _saved(out)
    assert saved and saved[-1] == (newest or saved[-1]) and saved[-1] <= 12
    if graceful:  # the state of the step it stopped at
        assert saved[-1] == _steps_logged(out)
    return saved


#: pretraining: 4 epochs of 3 steps, validations every 3 steps, states every 2 (the first run's 'before' retrieval too)
PRETRAIN = ("train.epochs=4", "train.eval_every=3", "train.save_every=2", "eval.train_subset=8", "train.progress=false")


def _pretrain_argv(data: Any, out: Path) -> list[str]:
    return [
        "--config", str(REPO / "configs/pretrain/tiny_cpu.yaml"), f"data.table={data.table}",
        f"data.corpus={data.corpus}", f"model.text.model={data.text_model}", "model.text.hidden_size=32",
        f"data.text_cache={data.text_cache}", "data.val_split=test", f"out={out}", *PRETRAIN,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pretrain_reference(text_image_set, tmp_path_factory) -> tuple[Any, Path]:
    from pretrain.train import main as pretrain

    data = text_image_set(16)
    out = tmp_path_factory.mktemp("fault_pretrain") / "reference"
    pretrain(_pretrain_argv(data, out))
    return data, out


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_pretrain_killed_and_resumed_equals_an_uninterrupted_run(pretrain_reference, tmp_path, point):
    from pretrain.train import main as pretrain

    data, reference = pretrain_reference
    out = tmp_path / "run"
    saved = _kill_trainer(["pretrain", *_pretrain_argv(data, out)], out, point)
    results = pretrain([*_pretrain_argv(data, out), "--resume", "latest"])
    assert results["resumed_from_step"] == saved[-1]
    _same_run(out, reference, "model/model.safetensors")


#: the four-view classifier: 3 epochs of 5 steps, validations every epoch, states every 2 steps
MULTIVIEW = ("train.epochs=3", "train.save_every=2", "data.image_size=[48,32]", "eval.bootstrap=0", "eval.plots=false")


def _multiview_argv(table: Path, out: Path) -> list[str]:
    config = REPO / "configs/multiview/tiny.yaml"
    return ["--config", str(config), f"data.table={table}", "data.label_from=birads_4_5", f"out={out}", *MULTIVIEW]


@pytest.fixture(scope="module")
def multiview_reference(text_image_set, tmp_path_factory) -> tuple[Path, Path]:
    from downstream.multiview.run import main as multiview

    table = text_image_set(64, test_fraction=0.35).table
    out = tmp_path_factory.mktemp("fault_multiview") / "reference"
    multiview(_multiview_argv(table, out))
    return table, out


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_multiview_killed_and_resumed_equals_an_uninterrupted_run(multiview_reference, tmp_path, point):
    from downstream.multiview.run import main as multiview

    table, reference = multiview_reference
    out = tmp_path / "run"
    _kill_trainer(["multiview", *_multiview_argv(table, out)], out, point)
    multiview([*_multiview_argv(table, out), "--resume", "latest"])
    _same_run(out, reference, "best/model.safetensors")


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("command", ["pretrain", "multiview"])
def test_a_refused_resume_touches_nothing(pretrain_reference, multiview_reference, tmp_path, capsys, command):
    """Resuming with another batch size is refused by the checkpoint's layout before anything is written: the run
    folder holds the same files with the same bytes (no resumes/ record, no tracker events, no log line)."""
    out = tmp_path / "run"
    if command == "pretrain":
        data, reference = pretrain_reference
        argv = _pretrain_argv(data, out)
    else:
        table, reference = multiview_reference
        argv = _multiview_argv(table, out)
    shutil.copytree(reference, out)
    before = _files(out)
    assert "log.txt" in before and any(name.endswith("train_state.json") for name in before)
    code = cli.main([command, *argv, "data.batch_size=4", "train.trackers=[tensorboard]", "--resume", "latest"])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "batch_size: 8 -> 4" in error, error
    assert _files(out) == before
