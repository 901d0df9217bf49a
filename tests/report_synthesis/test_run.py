"""The batch script: corpus layout, manifest, shards, retries, fallbacks, resume after a kill."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mvmlm.config import ConfigError
from mvmlm.data.schema import read_table, write_table
from mvmlm.rundir import RunDir
from report_synthesis import corpus_glob, read_corpus, template_report
from report_synthesis.backends import Generation, register_backend
from report_synthesis.facts import breast_facts
from report_synthesis.run import ReportsConfig, main, write_reports

BREASTS = 6


def run_main(table_path, out, *overrides):
    return main([f"table={table_path}", f"out={out}", "progress=false", *overrides])


def test_template_corpus_has_one_report_per_breast_and_variant(table_path, tmp_path):
    out = tmp_path / "corpus"
    summary = run_main(table_path, out, "variants=2", "chunk_size=5")
    corpus = read_corpus(out)
    assert len(corpus) == 2 * BREASTS == summary["written"] and corpus.id.is_unique
    assert sorted(corpus.variant.tolist()) == [0] * BREASTS + [1] * BREASTS
    assert (corpus.source == "template").all() and corpus.fallback_reason.isna().all()
    assert corpus.loc[corpus.id == "toy/PAT-0001/EX-0001/L#1", "report"].item() != ""
    assert json.loads(corpus.facts.iloc[0])["laterality"] in ("L", "R")
    assert len(list((out / "parts").glob("part-*.parquet"))) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "template" and manifest["counts"]["reports"] == 12
    assert manifest["prompt_hash"] == corpus.prompt_hash.iloc[0] and "pathology" not in manifest["fields"]
    assert json.loads((out / "metrics.json").read_text())["written"] == 12
    assert (out / "config.yaml").is_file() and (out / "provenance.json").is_file()
    assert summary["length_words"]["min"] > 5 and summary["rejections"] == {}


def test_corpus_loads_with_datasets(table_path, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "corpus"
    run_main(table_path, out, "chunk_size=4")
    dataset = load_dataset("parquet", data_files=corpus_glob(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert dataset.num_rows == BREASTS and dataset.features["fallback_reason"].dtype == "string"
    assert set(dataset["breast_id"]) == set(read_corpus(out).breast_id)


def test_rerun_writes_nothing_and_more_variants_only_add_the_new_ones(table_path, tmp_path):
    out = tmp_path / "corpus"
    run_main(table_path, out)
    first = read_corpus(out)
    assert run_main(table_path, out)["written"] == 0
    assert run_main(table_path, out, "variants=3")["written"] == 2 * BREASTS
    grown = read_corpus(out)
    assert grown.id.is_unique and len(grown) == 3 * BREASTS
    assert grown.set_index("id").loc[first.id, "report"].tolist() == first.report.tolist()


def test_shards_split_the_breasts_without_overlap(table_path, tmp_path):
    out = tmp_path / "corpus"
    written = [run_main(table_path, out, "variants=2", f"--shard-id={k}", "--num-shards=2")["written"] for k in (0, 1)]
    corpus = read_corpus(out)
    assert sum(written) == len(corpus) == 2 * BREASTS and corpus.id.is_unique and min(written) > 0
    assert corpus.groupby("breast_id").size().eq(2).all()
    assert {p.name for p in out.glob("metrics-shard*.json")} == {"metrics-shard00000.json", "metrics-shard00001.json"}


def test_changed_prompt_or_backend_refuses_to_add_to_an_existing_corpus(table_path, tmp_path):
    out = tmp_path / "corpus"
    run_main(table_path, out)
    with pytest.raises(ConfigError, match="prompt_hash"):
        run_main(table_path, out, "prompt.system=Be brief.")
    with pytest.raises(ConfigError, match="fields"):
        run_main(table_path, out, "fields=[birads]")
    assert "Be brief" not in (out / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("num_shards=0", "num_shards"),
        ("shard_id=2", "shard_id"),
        ("fields=[birads,mrn]", "fields"),
        ("variants=0", "variants"),
        ("backend.name=gpt5", "backend.name"),
    ],
)
def test_bad_config_values_name_the_key(table_path, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        run_main(table_path, tmp_path / "corpus", "num_shards=2" if key == "shard_id" else "num_shards=1", override)


def test_missing_table_is_a_file_error_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        run_main(tmp_path / "nope.parquet", tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()


class Scripted:
    """A backend whose text depends on the attempt: wrong BI-RADS first, right on retries (``good_after``)."""

    name = "scripted"

    def __init__(self, good_after: int):
        self.good_after, self.calls = good_after, []

    def generate(self, requests):
        self.calls.append([r.seed for r in requests])
        attempt = len(self.calls) - 1
        texts = [template_report(r.facts, 0) for r in requests]
        if attempt < self.good_after:
            texts = [t.replace("BI-RADS", "BI-RADS 6, i.e. BI-RADS") for t in texts]
        return [Generation(r.id, t, "stop") for r, t in zip(requests, texts, strict=True)]


def test_rejected_generation_is_retried_with_a_new_seed(table_path, tmp_path):
    cfg = ReportsConfig(table=str(table_path), out=str(tmp_path / "c"), progress=False, max_attempts=3)
    backend = Scripted(good_after=1)
    summary = write_reports(cfg, RunDir(tmp_path / "c"), backend)
    corpus = read_corpus(tmp_path / "c")
    with_birads = corpus.facts.str.contains('"birads"')
    assert summary["accepted_after_retry"] == with_birads.sum() == 5 and summary["rejections"] == {"birads": 5}
    assert (corpus.attempts[with_birads] == 2).all() and (corpus.attempts[~with_birads] == 1).all()
    assert set(corpus.source) == {"scripted"} and len(backend.calls) == 2
    assert not set(backend.calls[1]) & set(backend.calls[0])


def test_generation_failing_every_attempt_falls_back_to_the_template_with_the_reason(table_path, tmp_path):
    cfg = ReportsConfig(table=str(table_path), out=str(tmp_path / "c"), progress=False, max_attempts=2)
    summary = write_reports(cfg, RunDir(tmp_path / "c"), Scripted(good_after=99))
    corpus = read_corpus(tmp_path / "c").set_index("id")
    fallback = corpus[corpus.source == "template"]
    assert summary["template_fallback"] == len(fallback) == 5 and (fallback.attempts == 2).all()
    assert fallback.fallback_reason.str.startswith("birads: states [").all()
    assert "BI-RADS 6" not in "".join(fallback.report)


SLOW_RUNNER = """
import sys, time
from report_synthesis.backends import register_backend
from report_synthesis.backends.template import TemplateBackend
from report_synthesis.run import main

@register_backend("slow")
class Slow(TemplateBackend):
    name = "slow"
    def generate(self, requests):
        time.sleep(float(sys.argv[1]) * len(requests))
        return super().generate(requests)

main(sys.argv[2:])
"""


def test_killed_run_resumes_and_writes_every_id_exactly_once(tmp_path):
    from mvmlm.data.synthetic.truth import sample_exams

    table = write_table(sample_exams(16, seed=5), tmp_path / "table.parquet")
    out = tmp_path / "corpus"
    script = tmp_path / "slow_runner.py"
    script.write_text(textwrap.dedent(SLOW_RUNNER))
    args = [f"table={table}", f"out={out}", "progress=false", "variants=2", "chunk_size=4", "backend.name=slow"]
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    log = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen([sys.executable, str(script), "0.1", *args], env=env, stderr=log)
    deadline = time.monotonic() + 60
    while len(list((out / "parts").glob("part-*.parquet"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_corpus(out)
    assert 8 <= len(partial) < 64, (tmp_path / "stderr.txt").read_text()  # killed mid-run: some parts, not all
    (out / "parts" / ".part-00000-000099.parquet.tmp1").write_bytes(b"half-written")
    subprocess.run([sys.executable, str(script), "0", *args], env=env, check=True, stderr=log)
    log.close()
    done = read_corpus(out)
    expected = {f"{f.breast_id}#{v}" for f in breast_facts(read_table(table)) for v in (0, 1)}
    assert done.id.is_unique and set(done.id) == expected and len(done) == 64
    assert set(partial.id) <= set(done.id)
    assert not list((out / "parts").glob(".*tmp*"))


class Interrupted:
    """A backend that dies on its first call, like a run killed before its first part."""

    name = "interrupted"

    def generate(self, requests):
        raise KeyboardInterrupt


def test_manifest_is_written_before_the_first_part_so_a_killed_run_still_guards_its_settings(table_path, tmp_path):
    out = tmp_path / "corpus"
    cfg = ReportsConfig(table=str(table_path), out=str(out), progress=False)
    with pytest.raises(KeyboardInterrupt):
        write_reports(cfg, RunDir(out), Interrupted())
    assert read_corpus(out).empty and json.loads((out / "manifest.json").read_text())["backend"] == "template"
    with pytest.raises(ConfigError, match="prompt_hash"):
        run_main(table_path, out, "prompt.system=Be brief.")
    assert run_main(table_path, out)["written"] == BREASTS


@register_backend("always_wrong")
class AlwaysWrong(Scripted):
    """Every generation fails the fact check on BI-RADS (breasts without BI-RADS pass)."""

    name = "always_wrong"

    def __init__(self, cfg):
        super().__init__(good_after=10**9)


@register_backend("dead_server")
class DeadServer(Scripted):
    name = "dead_server"

    def __init__(self, cfg):
        super().__init__(good_after=0)

    def generate(self, requests):
        return [Generation(r.id, "", None, error="connection refused") for r in requests]


@pytest.mark.parametrize(
    ("overrides", "code", "last_line"),
    [
        ([], 2, r"error: 1 of 6 reports done, 5 failed \(listed in .*part-\*\.parquet, column fallback_reason\): "),
        (["max_failures=0.9"], 0, r"reports .*: 1 of 6 reports done, 5 failed \(listed in "),
        (["backend.name=dead_server"], 2, r"error: backend 'dead_server' failed every request of a chunk; .*rerun"),
        (["max_failures=1.5"], 2, r"error: key 'max_failures': a fraction of the items in \[0, 1\], got 1.5"),
    ],
)
def test_exit_code_and_last_line_state_the_failures(table_path, tmp_path, capfd, caplog, overrides, code, last_line):
    from mvmlm.cli import main as mvmlm

    args = [f"table={table_path}", f"out={tmp_path / 'c'}", "progress=false", "max_attempts=1"]
    assert mvmlm(["reports", *args, "backend.name=always_wrong", *overrides]) == code
    last = capfd.readouterr().err.strip().splitlines()[-1] if code else caplog.messages[-1]
    assert re.match(last_line, last), last
