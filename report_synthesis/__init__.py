"""Synthetic radiology reports from tabular annotations: one report per breast, stating only the table's facts.

``python -m report_synthesis --config configs/reports/template.yaml table=T out=DIR`` (also ``mvmlm reports``).
Other parts of the toolkit use :func:`breast_facts` + :func:`template_report` for model-free text, and
:func:`read_corpus` to read a written corpus.
"""

from report_synthesis.backends.template import template_report
from report_synthesis.corpus import corpus_glob, read_corpus
from report_synthesis.facts import BreastFacts, breast_facts

__all__ = ["BreastFacts", "breast_facts", "corpus_glob", "read_corpus", "template_report"]
