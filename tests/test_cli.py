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


def test_usage_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_usage_shows_each_command_with_its_description(capsys):
    assert cli.main(["--help"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert rows["pretrain"].split(maxsplit=1)[1] == cli.COMMANDS["pretrain"][1]
    assert all(name in rows and "('" not in rows[name] and "mvmlm." not in rows[name] for name in cli.COMMANDS)


def test_unknown_command_exits_2(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_every_command_module_has_main():
    for module, _ in cli.COMMANDS.values():
        assert callable(importlib.import_module(module).main)


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
        dict(dataset="d", patient_id="p1", exam_id="e1", image_id=f"i{view}", path=f"{view}.dcm", laterality="L",
             view=view, split="train", **extra)
        for view in ("CC", "MLO")
    ]  # fmt: skip
    return schema.write_table(pd.DataFrame(rows), path)


def test_table_without_cache_path_is_one_error_line(tmp_path, capsys):
    from mvmlm.data.preprocess import read_cached_table

    table = _canonical_table(tmp_path / "table.parquet")
    line = _one_error_line(lambda argv: read_cached_table(table), capsys)
    assert str(table) in line and "mvmlm preprocess" in line


def test_empty_split_is_one_error_line(tmp_path, capsys):
    from downstream.tasks import DataConfig, load_breasts

    table = _canonical_table(tmp_path / "table.parquet", cache_path="x.png")
    line = _one_error_line(lambda argv: load_breasts(DataConfig(table=str(table))), capsys)
    assert "no breasts in split 'val'" in line


def test_mvclip_encoder_without_checkpoint_is_one_error_line(capsys):
    from downstream.embed import EncoderConfig, build_backbone

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
