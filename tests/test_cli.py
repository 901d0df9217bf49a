from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mvmlm import cli
from mvmlm.data import schema
from mvmlm.data.roi import NoRoiError
from mvmlm.data.sources import SourceError
from mvmlm.errors import InputError
from mvmlm.models.text_encoders import TextModelUnavailableError
from report_synthesis.backends import BackendUnavailable

REPO = Path(__file__).resolve().parents[1]


def test_usage_lists_every_command_with_its_summary(capsys):
    assert cli.main(["--help"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    known = cli.commands()
    assert set(rows) == set(known) >= {"pretrain", "finetune", "multiview", "dual-stream", "split", "reports"}
    for name, command in known.items():
        assert rows[name].split(maxsplit=1)[1] == command.summary


def test_commands_are_found_through_the_entry_point_group():
    from importlib.metadata import entry_points

    names = {e.name for e in entry_points(group=cli.ENTRY_POINT_GROUP)}
    assert names == set(cli.commands())


def test_unknown_command_exits_2(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_every_command_main_and_config_can_be_imported():
    for command in cli.commands().values():
        for target in (command.main, command.config):
            module, _, attr = target.partition(":")
            assert callable(getattr(importlib.import_module(module), attr)), target


@pytest.mark.parametrize("name", sorted(cli.commands()))
def test_help_needs_neither_torch_nor_the_command_code(name):
    """``mvmlm <command> --help`` reads only the config schema: no torch import (fast), plain text."""
    code = (
        "import sys; from mvmlm.cli import main\n"
        f"try:\n    main([{name!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'timm', 'transformers', 'sklearn') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("HEAVY []"), done.stdout[-500:]
    assert f"usage: mvmlm {name}" in done.stdout and "config keys" in done.stdout
    assert "``" not in done.stdout and ":func:" not in done.stdout and ":mod:" not in done.stdout


def test_python_dash_m_of_a_subpackage_runs_its_command():
    done = subprocess.run(
        [sys.executable, "-m", "downstream.finetune", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "usage: mvmlm finetune" in done.stdout and "train.resume" in done.stdout


def _raiser(exc: Exception):
    def entry(argv):
        raise exc

    return entry


@pytest.mark.parametrize(
    "error",
    [
        SourceError("/data/vindr/breast-level_annotations.csv: VinDr-Mammo table not found"),
        schema.SchemaError([schema.Violation("laterality", "values ['X'] not in ['L', 'R']")], "t.parquet"),
        NoRoiError("image i1: no lesion box"),
        BackendUnavailable("the vllm report backend needs vLLM"),
        TextModelUnavailableError("bert: not in the local cache"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_input_errors_exit_2_without_traceback(error, capsys):
    assert isinstance(error, InputError)
    assert cli.run_command(_raiser(error)) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"error: {str(error).splitlines()[0]}" and "Traceback" not in err


def test_other_errors_still_propagate():
    with pytest.raises(RuntimeError):
        cli.run_command(_raiser(RuntimeError("a bug")))


def _one_error_line(entry, capsys) -> str:
    assert cli.run_command(entry) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def _canonical_table(path: Path, **extra) -> Path:
    rows = [
        dict(
            dataset="d",
            patient_id="p1",
            exam_id="e1",
            image_id=f"i{view}",
            path=f"{view}.dcm",
            laterality="L",
            view=view,
            split="train",
            **extra,
        )
        for view in ("CC", "MLO")
    ]
    return schema.write_table(pd.DataFrame(rows), path)


def test_table_without_cache_path_is_one_error_line(tmp_path, capsys):
    from mvmlm.data.preprocess import read_cached_table

    table = _canonical_table(tmp_path / "table.parquet")
    line = _one_error_line(lambda argv: read_cached_table(table), capsys)
    assert str(table) in line and "mvmlm preprocess" in line


def test_empty_split_is_one_error_line(tmp_path, capsys):
    from downstream.common.tasks import DataConfig, load_breasts

    table = _canonical_table(tmp_path / "table.parquet", cache_path="x.png")
    line = _one_error_line(lambda argv: load_breasts(DataConfig(table=str(table))), capsys)
    assert "no breasts in split 'val'" in line


def test_mvclip_encoder_without_checkpoint_is_one_error_line(capsys):
    from downstream.common.embed import EncoderConfig, build_backbone

    line = _one_error_line(lambda argv: build_backbone(EncoderConfig(source="mvclip")), capsys)
    assert "checkpoint=" in line


def test_missing_vllm_names_the_editable_install(monkeypatch, capsys):
    from report_synthesis.backends.vllm import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    line = _one_error_line(lambda argv: import_vllm(), capsys)
    assert 'pip install -e ".[llm]"' in line and "mvmlm[llm]" not in line


def test_tables_on_a_missing_root_is_one_error_line_naming_the_file(tmp_path, capsys):
    root = tmp_path / "no-such-vindr"
    argv = ["tables", "--source", "vindr", "--root", str(root), "--out", str(tmp_path / "t.parquet")]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(root / "breast-level_annotations.csv") in lines[0]


def test_python_dash_m_mvmlm_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "mvmlm", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pretrain" in done.stdout


def test_list_flags_take_several_values_and_switches_none():
    from mvmlm.commands import PREDICT, PUSH

    cfg = PREDICT.parse(
        ["--model", "m", "--input", "a b.dcm", "c:/x", "--allow-for-processing", "--out", "o", "workers=0"]
    )
    assert cfg.input == ["a b.dcm", "c:/x"] and cfg.allow_for_processing is True and cfg.workers == 0
    assert PUSH.parse(["--model", "m", "--repo-id", "o/n", "--private"]).private is True
    assert PUSH.parse(["--model", "m", "--repo-id", "o/n"]).private is False


def test_a_list_flag_stops_at_the_next_override():
    from mvmlm.commands import PREDICT

    cfg = PREDICT.parse(["--model", "m", "--input", "a", "b", "root=/data", "--out", "o"])
    assert cfg.input == ["a", "b"] and cfg.root == "/data"
