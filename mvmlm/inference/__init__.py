"""Inference with model bundles: ``mvmlm predict`` / ``mvmlm embed`` on new DICOM exams, ``mvmlm push`` to the Hub."""
