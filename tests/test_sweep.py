"""Finished-run records of resumable sweeps: reuse only when resuming and only with the same settings."""

from __future__ import annotations

from mvmlm.rundir import RunDir
from mvmlm.sweep import FinishedRuns, file_digest, settings_key, shaping_settings


def test_records_are_reused_only_when_resuming_with_the_same_settings(tmp_path, caplog):
    run = RunDir(tmp_path)
    FinishedRuns(run, resume=False).put("a", {"lr": 1}, {"scores": [0.25, 0.5]})
    assert FinishedRuns(run, resume=False).get("a", {"lr": 1}) is None
    resumed = FinishedRuns(run, resume=True)
    assert resumed.get("a", {"lr": 1}) == {"scores": [0.25, 0.5]} and resumed.reused == 1
    assert resumed.get("a", {"lr": 2}) is None and "other settings" in caplog.text
    assert resumed.get("b", {"lr": 1}) is None


def test_only_the_main_process_writes_and_keys_ignore_dict_order(tmp_path):
    FinishedRuns(RunDir(tmp_path), resume=True, main_process=False).put("a", {}, {})
    assert not (tmp_path / "finished").exists()
    assert settings_key({"a": 1, "b": [2]}) == settings_key({"b": [2], "a": 1}) != settings_key({"a": 1, "b": [3]})


def test_file_digest_follows_content_not_path(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    a.write_bytes(b"one")
    b.write_bytes(b"one")
    before = file_digest(a)
    assert before == file_digest(b)
    a.write_bytes(b"two")  # re-split table written to the same path
    assert file_digest(a) != before


def test_shaping_settings_drop_what_never_changes_a_result_and_keep_the_rest():
    config = {
        "out": "runs/x",
        "data": {"table": "t.parquet", "num_workers": 4, "batch_size": 8},
        "train": {"epochs": 3, "resume": "latest", "progress": False, "device": "cpu"},
        "embed": {"cache": "c"},
    }
    shaping = shaping_settings(config, {"train": ("device",), "embed": ("cache",), "absent": ("x",)})
    assert shaping == {"data": {"table": "t.parquet", "batch_size": 8}, "train": {"epochs": 3}, "embed": {}}
    assert config["data"]["num_workers"] == 4 and config["out"] == "runs/x"  # the input is left as it was
    assert settings_key(shaping_settings({**config, "out": "elsewhere"})) == settings_key(shaping_settings(config))
    changed = {**config, "data": {**config["data"], "batch_size": 16}}
    assert settings_key(shaping_settings(changed)) != settings_key(shaping_settings(config))
