"""``python -m report_synthesis --config configs/reports/<x>.yaml table=T out=DIR`` (also ``mvmlm reports``).

Canonical image table in -> one report per breast (``variants: k`` reports per breast) -> a corpus of
parquet parts + manifest in ``out`` (see :mod:`report_synthesis.corpus`). Every generation is cleaned and
fact-checked; a rejected one is retried with a new seed up to ``max_attempts`` generations, then replaced
by the template report with the reason recorded (``fallback_reason``): a failed report. The command exits with
code 2 when every report, or more than ``max_failures`` of those written by the run, failed, or when the backend
answered no request of a chunk (the parts written so far are kept). Resumable; ``--shard-id/--num-shards`` split
the breasts.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from mvmlm.batch import DEFAULT_MAX_FAILURES, TooManyFailuresError, check_max_failures, failure_summary
from mvmlm.config import MISSING, ConfigError, config_to_dict
from mvmlm.data.schema import read_table
from mvmlm.data.shards import shard_of
from mvmlm.rundir import RunDir
from report_synthesis import corpus
from report_synthesis.backends import (
    Backend,
    BackendConfig,
    BackendError,
    Generation,
    Request,
    create_backend,
    derive_seed,
)
from report_synthesis.backends.template import template_report
from report_synthesis.facts import DEFAULT_FIELDS, BreastFacts, breast_facts, check_fields
from report_synthesis.postprocess import clean, fact_check, reason_category
from report_synthesis.prompts import PROMPT_VERSION, PromptConfig, build_messages, prompt_hash

__all__ = ["ReportsConfig", "main", "write_reports"]

log = logging.getLogger(__name__)


@dataclass
class ReportsConfig:
    table: str = MISSING  # canonical image table (parquet), e.g. from `mvmlm tables`
    out: str = MISSING  # corpus + run directory
    variants: int = 1  # reports per breast
    fields: list[str] = field(default_factory=lambda: list(DEFAULT_FIELDS))  # facts a report may state
    seed: int = 0  # mixed into every per-request seed
    max_attempts: int = 3  # generations per report before falling back to the template
    max_failures: float = DEFAULT_MAX_FAILURES  # exit code 2 when more than this fraction fell back to the template
    chunk_size: int = 512  # reports per backend call and per parquet part (the checkpoint unit)
    shard_id: int = 0
    num_shards: int = 1
    progress: bool = True
    prompt: PromptConfig = field(default_factory=PromptConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)


def _validate(cfg: ReportsConfig) -> None:
    if not Path(cfg.table).is_file():
        raise FileNotFoundError(f"key 'table': canonical table not found: {cfg.table}")
    check_fields(cfg.fields)
    for key, value, low in (
        ("variants", cfg.variants, 1),
        ("max_attempts", cfg.max_attempts, 1),
        ("chunk_size", cfg.chunk_size, 1),
        ("num_shards", cfg.num_shards, 1),
    ):
        if value < low:
            raise ConfigError(f"key {key!r}: must be >= {low}, got {value}")
    if not 0 <= cfg.shard_id < cfg.num_shards:
        raise ConfigError(f"key 'shard_id': must be in [0, {cfg.num_shards}), got {cfg.shard_id}")
    check_max_failures(cfg.max_failures)


def in_shard(breast: str, shard_id: int, num_shards: int) -> bool:
    """Whether ``breast`` belongs to shard ``shard_id`` (stable hash; all variants of a breast together)."""
    return shard_of(breast, num_shards) == shard_id


def _todo(cfg: ReportsConfig, facts: Sequence[BreastFacts], done: set[str]) -> list[tuple[str, int, BreastFacts]]:
    jobs = []
    for item in facts:
        if in_shard(item.breast_id, cfg.shard_id, cfg.num_shards):
            jobs += [(f"{item.breast_id}#{v}", v, item) for v in range(cfg.variants)]
    return [job for job in jobs if job[0] not in done]


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _Stats:
    written: int = 0
    first_try: int = 0
    retried: int = 0
    fallback: int = 0
    rejections: Counter = field(default_factory=Counter)
    chars: list[int] = field(default_factory=list)
    words: list[int] = field(default_factory=list)


def _synthesize(cfg: ReportsConfig, backend: Backend, jobs: list, phash: str, stats: _Stats) -> list[dict]:
    """Generate, check, retry and fall back for one chunk; returns its corpus rows."""
    results: dict[str, tuple[str, str, int, str | None]] = {}
    last_reason: dict[str, str] = {}
    pending = jobs
    is_template = backend.name == "template"
    for attempt in range(cfg.max_attempts):
        requests = [
            Request(job_id, build_messages(facts, cfg.prompt), derive_seed(cfg.seed, job_id, attempt), facts)
            for job_id, _, facts in pending
        ]
        generations: list[Generation] = backend.generate(requests)
        if attempt == 0 and generations and all(g.error for g in generations):
            raise BackendError(
                f"backend {backend.name!r} failed every request of a chunk; first: {generations[0].error}"
            )
        retry = []
        for job, request, gen in zip(pending, requests, generations, strict=True):
            text = "" if gen.error else clean(gen.text)
            reasons = (
                [f"backend error: {gen.error}"]
                if gen.error
                else fact_check(text, request.facts, gen.finish_reason, stated_facts=gen.stated_facts)
            )
            if reasons:
                stats.rejections.update(reason_category(r) for r in reasons)
                last_reason[job[0]] = reasons[0]
                retry.append(job)
            else:
                results[job[0]] = (text, backend.name, 0 if is_template else attempt + 1, None)
        pending = retry
        if not pending or is_template:
            break
    for job_id, _, facts in pending:
        text = template_report(facts, derive_seed(cfg.seed, job_id, "fallback"))
        problems = fact_check(text, facts)
        if problems:
            log.warning("%s: the template report also fails the fact check: %s", job_id, problems)
        results[job_id] = (text, "template", 0 if is_template else cfg.max_attempts, last_reason[job_id])
    rows = []
    for job_id, variant, facts in jobs:
        text, source, attempts, reason = results[job_id]
        stats.written += 1
        stats.fallback += reason is not None
        stats.first_try += reason is None and attempts <= 1
        stats.retried += reason is None and attempts > 1
        stats.chars.append(len(text))
        stats.words.append(len(text.split()))
        rows.append(
            {
                "id": job_id,
                "breast_id": facts.breast_id,
                "variant": variant,
                "dataset": facts.dataset,
                "patient_id": facts.patient_id,
                "exam_id": facts.exam_id,
                "laterality": facts.laterality,
                "split": facts.split,
                "report": text,
                "source": source,
                "attempts": attempts,
                "fallback_reason": reason,
                "prompt_hash": phash,
                "facts": facts.to_json(),
            }
        )
    return rows


def _lengths(values: list[int]) -> dict:
    if not values:
        return {}
    return {
        "min": min(values),
        "mean": round(statistics.fmean(values), 1),
        "median": statistics.median(values),
        "max": max(values),
    }


def _manifest(cfg: ReportsConfig) -> dict:
    """What identifies the corpus's reports (checked on resume) plus the provenance of the run."""
    backend = config_to_dict(cfg.backend)
    return {
        "format": corpus.FORMAT,
        "backend": cfg.backend.name,
        "model": cfg.backend.model,
        "revision": cfg.backend.revision,
        "sampling": backend["sampling"],
        "backend_options": backend.get(cfg.backend.name, {}),
        "prompt_version": PROMPT_VERSION,
        "prompt_hash": prompt_hash(cfg.prompt, cfg.fields),
        "fields": list(cfg.fields),
        "seed": cfg.seed,
        "max_attempts": cfg.max_attempts,
        "variants": cfg.variants,
        "table": cfg.table,
    }


def write_reports(cfg: ReportsConfig, run: RunDir, backend: Backend | None = None) -> dict:
    """Write (or complete) this shard's part of the corpus at ``cfg.out``; returns the summary."""
    _validate(cfg)
    manifest = _manifest(cfg)
    phash = manifest["prompt_hash"]
    corpus.check_manifest(cfg.out, manifest)
    facts = [f.select(cfg.fields) for f in breast_facts(read_table(cfg.table))]
    corpus.write_manifest(cfg.out, manifest)  # before the first part: a rerun after a kill is checked against it
    corpus.remove_stale(cfg.out, cfg.shard_id)
    done = corpus.written_ids(cfg.out)
    jobs = _todo(cfg, facts, done)
    expected = sum(in_shard(f.breast_id, cfg.shard_id, cfg.num_shards) for f in facts) * cfg.variants
    log.info(
        "shard %d/%d: %d reports expected, %d already written, %d to write (backend %s, prompt %s)",
        cfg.shard_id,
        cfg.num_shards,
        expected,
        expected - len(jobs),
        len(jobs),
        cfg.backend.name,
        phash,
    )
    stats = _Stats()
    start = time.perf_counter()
    if jobs:
        backend = backend or create_backend(cfg.backend)
        with tqdm(
            total=len(jobs), unit="report", desc=f"reports {cfg.shard_id}/{cfg.num_shards}", disable=not cfg.progress
        ) as bar:
            for chunk in _chunks(jobs, cfg.chunk_size):
                corpus.write_part(cfg.out, cfg.shard_id, _synthesize(cfg, backend, chunk, phash, stats))
                bar.update(len(chunk))
    seconds = time.perf_counter() - start
    counts = corpus.corpus_counts(cfg.out)
    corpus.write_manifest(cfg.out, {**manifest, "counts": counts})
    summary = {
        "shard": f"{cfg.shard_id}/{cfg.num_shards}",
        "expected": expected,
        "already_written": expected - len(jobs),
        "written": stats.written,
        "accepted_first_try": stats.first_try,
        "accepted_after_retry": stats.retried,
        "template_fallback": stats.fallback,
        "rejections": dict(stats.rejections.most_common()),
        "length_chars": _lengths(stats.chars),
        "length_words": _lengths(stats.words),
        "seconds": round(seconds, 3),
        "reports_per_s": round(stats.written / seconds, 2) if stats.written and seconds > 0 else None,
        "corpus": counts,
    }
    log.info(
        "wrote %d reports in %.1fs (%s/s): %d first try, %d after retry, %d template fallback; rejections %s; "
        "words %s; corpus now %d reports",
        stats.written,
        seconds,
        summary["reports_per_s"],
        stats.first_try,
        stats.retried,
        stats.fallback,
        summary["rejections"] or "none",
        summary["length_words"] or "-",
        counts["reports"],
    )
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Write the report corpus; returns the summary (also in ``metrics.json`` of the run directory)."""
    from report_synthesis.command import COMMAND

    cfg = COMMAND.parse(argv)
    _validate(cfg)
    corpus.check_manifest(cfg.out, _manifest(cfg))  # before the run directory records a config it would refuse
    run = RunDir.create(cfg.out, cfg)
    try:
        summary = write_reports(cfg, run)
    except BackendError as exc:
        raise TooManyFailuresError(f"{exc}; the parts written so far are kept, rerun to continue") from exc
    run.write_json("metrics.json" if cfg.num_shards == 1 else f"metrics-shard{cfg.shard_id:05d}.json", summary)
    done = failure_summary(
        summary["written"] - summary["template_fallback"],
        summary["template_fallback"],
        cfg.max_failures,
        what="reports",
        where=f"{corpus.corpus_glob(cfg.out)}, column fallback_reason",
    )
    log.info("reports %s: %s", cfg.out, done)
    return summary
