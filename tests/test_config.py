from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mvmlm.config import (
    MISSING,
    ConfigError,
    DataConfig,
    build_config,
    config_to_yaml,
    describe_config,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Train:
    lr: float = 1e-3
    epochs: int = 2


@dataclass
class Data:
    root: str = MISSING
    views: list[str] = field(default_factory=lambda: ["CC", "MLO"])


@dataclass
class Example:
    data: Data = field(default_factory=Data)
    train: Train = field(default_factory=Train)
    name: str = "run"


def test_file_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  root: /from/file\ntrain:\n  lr: 0.5\n")
    cfg = load_config(Example, ["--config", str(path), "train.lr=1e-4", "name=x"])
    assert isinstance(cfg, Example)
    assert cfg.data.root == "/from/file"
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.epochs == 2
    assert cfg.name == "x"


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  root: /x\ntrain:\n  lr_typo: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*lr_typo"):
        build_config(Example, [path])


def test_unknown_override_names_key():
    with pytest.raises(ConfigError, match="trian"):
        build_config(Example, overrides=["data.root=/x", "trian.lr=1"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="train.epochs"):
        build_config(Example, overrides=["data.root=/x", "train.epochs=many"])


def test_missing_mandatory_value_is_named():
    with pytest.raises(ConfigError, match="data.root"):
        build_config(Example)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        build_config(Example, overrides=["data.root"])
    with pytest.raises(ConfigError, match="not found"):
        build_config(Example, [tmp_path / "nope.yaml"])


def test_help_lists_keys_with_defaults(capsys):
    with pytest.raises(SystemExit):
        load_config(Example, ["--help"])
    out = capsys.readouterr().out
    assert "train.lr = 0.001" in out and "data.root = ???" in out


def test_resolved_yaml_round_trips(tmp_path):
    cfg = build_config(Example, overrides=["data.root=/y"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config_to_yaml(cfg))
    assert build_config(Example, [path]) == cfg


@dataclass
class Encoder:
    source: str = "mvclip"
    checkpoint: str = ""


@dataclass
class Encoders:
    encoders: dict[str, Encoder] = field(default_factory=dict)
    options: dict[str, int] = field(default_factory=dict)
    name: str = "run"


def test_yaml_mandatory_value_on_dict_of_dataclass_entry_stays_mandatory(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("encoders:\n  a:\n    checkpoint: ???\nname: ???\n")
    with pytest.raises(ConfigError, match=r"missing mandatory value\(s\): encoders\.a\.checkpoint, name;"):
        build_config(Encoders, [path])
    path.write_text("encoders:\n  resnet50.a1:\n    checkpoint: ???\n")  # a dict key with a dot in it
    with pytest.raises(ConfigError, match=r"missing mandatory value\(s\): encoders\.resnet50\.a1\.checkpoint;"):
        build_config(Encoders, [path])


def test_yaml_mandatory_value_is_satisfied_by_a_later_file_or_override(tmp_path):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("encoders:\n  a:\n    checkpoint: ???\n")
    second.write_text("encoders:\n  a:\n    checkpoint: /from/file\n")
    assert build_config(Encoders, [first, second]).encoders["a"].checkpoint == "/from/file"
    cfg = build_config(Encoders, [first], ["encoders.a.checkpoint=/from/override"])
    assert cfg.encoders == {"a": Encoder(checkpoint="/from/override")}


def test_probe_yaml_mandatory_checkpoint_is_reported():
    from downstream.probe.run import ProbeConfig

    with pytest.raises(ConfigError, match=r"missing mandatory value\(s\): encoders\.mvmlm\.checkpoint"):
        build_config(ProbeConfig, [REPO / "configs/probe/tiny.yaml"], ["data.table=x"])


def test_help_lists_empty_dicts_and_dict_entry_schema():
    text = describe_config(Encoders)
    lines = text.splitlines()
    assert "  encoders = {}" in lines and "  options = {}" in lines
    assert "  encoders.<name>.source = mvclip" in lines and "  encoders.<name>.checkpoint = ''" in lines
    assert not any(line.startswith("  options.<name>") for line in lines)


def test_help_after_config_shows_merged_values(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("encoders:\n  a:\n    checkpoint: ???\n")
    with pytest.raises(SystemExit) as exit_info:
        load_config(Encoders, ["--config", str(path), "name=x", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"config keys after --config {path} name=x" in out
    assert "  encoders.a.checkpoint = ???" in out and "  name = x" in out
    assert "encoders.<name>" not in out


def test_help_without_config_says_defaults(capsys):
    with pytest.raises(SystemExit):
        load_config(Example, ["-h"])
    assert "config keys with defaults" in capsys.readouterr().out


def test_help_with_missing_config_file_fails(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Example, ["--config", str(tmp_path / "nope.yaml"), "--help"])


def test_help_keeps_command_flags(capsys):
    parser = argparse.ArgumentParser(prog="cmd")
    parser.add_argument("--name")
    with pytest.raises(SystemExit):
        load_config(Example, ["--name", "flagged", "--help"], parser=parser)
    out = capsys.readouterr().out
    assert "--name NAME" in out and "  name = flagged" in out


def test_errors_are_one_line():
    for override in ("train.heigth=3", "train.epochs=many"):
        with pytest.raises(ConfigError) as info:
            build_config(Example, overrides=["data.root=/x", override])
        assert "\n" not in str(info.value) and "full_key" not in str(info.value)


@dataclass
class WithData:
    data: DataConfig = field(default_factory=DataConfig)


def test_a_scalar_where_a_section_now_is_names_its_fields(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  table: t.parquet\n  augment: false\n")
    with pytest.raises(
        ConfigError, match=r"old.yaml: key 'data.augment': is a section now.*data.augment.enabled=false"
    ):
        build_config(WithData, [old])
