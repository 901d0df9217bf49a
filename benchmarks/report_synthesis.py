"""Report synthesis: template backend reports/s, and the batch pipeline's overhead over the bare backend call.

    python benchmarks/report_synthesis.py [--exams 500] [--variants 2]

The pipeline time covers reading the table, building facts and prompts, the fact check, parquet parts and
the manifest; the bare time is ``TemplateBackend.generate`` on the same requests. One run each. The fact
check alone (``fact_check`` on every generated report; budget 2 ms per report on CPU) is timed separately;
benchmarks/factcheck.py times it on the labelled evaluation set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from mvmlm.data.schema import write_table
from mvmlm.data.synthetic.truth import sample_exams
from mvmlm.rundir import RunDir

# Run as a script, this file's folder comes first on sys.path and its name would shadow the package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)


def main() -> None:
    from report_synthesis.backends import BackendConfig, Request, create_backend, derive_seed
    from report_synthesis.facts import DEFAULT_FIELDS, breast_facts
    from report_synthesis.postprocess import fact_check
    from report_synthesis.run import ReportsConfig, write_reports

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exams", type=int, default=500)
    parser.add_argument("--variants", type=int, default=2)
    args = parser.parse_args()
    table = sample_exams(args.exams, seed=0)
    backend = create_backend(BackendConfig(name="template"))
    facts = [f.select(DEFAULT_FIELDS) for f in breast_facts(table)]
    requests = [
        Request(f"{f.breast_id}#{v}", [], derive_seed(0, f.breast_id, v), f)
        for f in facts
        for v in range(args.variants)
    ]
    start = time.perf_counter()
    generations = backend.generate(requests)
    bare = time.perf_counter() - start
    start = time.perf_counter()
    rejected = sum(bool(fact_check(g.text, r.facts)) for g, r in zip(generations, requests, strict=True))
    check_ms = (time.perf_counter() - start) * 1000 / len(requests)

    with tempfile.TemporaryDirectory() as tmp:
        path = write_table(table, Path(tmp) / "table.parquet")
        cfg = ReportsConfig(
            table=str(path), out=f"{tmp}/corpus", variants=args.variants, chunk_size=4096, progress=False
        )
        start = time.perf_counter()
        summary = write_reports(cfg, RunDir(Path(cfg.out)), backend)
        pipeline = time.perf_counter() - start
    n = len(requests)
    assert summary["written"] == n, summary
    print(f"{n} reports ({len(facts)} breasts x {args.variants} variants), template backend")
    print(f"{'':<28}{'seconds':>10}{'reports/s':>12}")
    print(f"{'bare TemplateBackend':<28}{bare:>10.3f}{n / bare:>12.0f}")
    print(f"{'pipeline (write_reports)':<28}{pipeline:>10.3f}{n / pipeline:>12.0f}")
    print(f"pipeline / bare time ratio: {pipeline / bare:.1f}x")
    print(f"fact check: {check_ms:.3f} ms per report (budget 2 ms), {rejected} of {n} template reports rejected")


if __name__ == "__main__":
    main()
