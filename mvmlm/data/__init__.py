"""Data layer: canonical table, native-dataset adapters, DICOM decoding, preprocessing cache, exams."""
