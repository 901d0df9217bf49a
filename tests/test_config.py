from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mvmlm.config import MISSING, ConfigError, build_config, config_to_yaml, load_config


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
