"""The core's commands (entry points of the group ``mvmlm.commands``); a light module, imported by ``mvmlm --help``."""

from mvmlm.cli import Command

__all__ = ["SYNTH_DATA", "TABLES", "SPLIT", "PREPROCESS", "INFO", "DEMO"]

SYNTH_DATA = Command(
    name="synth-data",
    summary="write synthetic mammography exams in a dataset's native format",
    main="mvmlm.data.synthetic:main",
    config="mvmlm.data.synthetic:SynthConfig",
    description="Writes real DICOM files and the dataset's own tables in its own folder layout (vindr, rsna, cmmd,\n"
    "cbis_ddsm, embed), with planted label-consistent signal and known lesion positions, plus\n"
    "OUT/synthetic_truth.parquet: the canonical table the adapter must produce.\n\n"
    "  mvmlm synth-data --format vindr --out data/synth_vindr --exams 100 --seed 0 height=512 width=320",
    flags=(("format", "format"), ("out", "out"), ("exams", "exams"), ("seed", "seed")),
)
TABLES = Command(
    name="tables",
    summary="read a native dataset into the canonical image table (parquet); splits are decided here, once",
    main="mvmlm.data.sources:main",
    config="mvmlm.data.sources:TablesConfig",
    description="Reads a dataset in its native download layout into the canonical image table (one row per image).\n"
    "The split column is the source's own where it has one, else patient-level with a fixed seed; every\n"
    "command reads this split.\n\n"
    "  mvmlm tables --source vindr --root /data/vindr-mammo --out tables/vindr.parquet",
    flags=(("source", "source"), ("root", "root"), ("out", "out")),
)
SPLIT = Command(
    name="split",
    summary="re-split a table's patients once (e.g. the paper's 80/20 train/val), for every command to read",
    main="mvmlm.data.splits:main",
    config="mvmlm.data.splits:SplitConfig",
    description="Writes a copy of a canonical table (or of a preprocess cache's table.parquet) whose patients are\n"
    "split again: rows of the splits in keep (default: test) stay, the other patients are drawn into train / val\n"
    "(/ test) with a fixed seed. No command splits data on its own: they all read the split column.\n\n"
    "  mvmlm split --table cache/1520x912-xxxx/table.parquet --out cache/1520x912-xxxx/table_80_20.parquet \\\n"
    "      val_fraction=0.2",
    flags=(("table", "table"), ("out", "out")),
)
PREPROCESS = Command(
    name="preprocess",
    summary="decode, crop and resize images into the 16-bit image cache",
    main="mvmlm.data.preprocess:main",
    config="mvmlm.data.preprocess:PreprocessConfig",
    description="Decodes every DICOM of a canonical table (VOI LUT, MONOCHROME1, chest wall left), crops to the\n"
    "breast, resizes keeping the aspect ratio and caches a 16-bit .npy per image in OUT/<H>x<W>-<hash>/.\n"
    "Resumable; unreadable files are listed in failures.csv. With roi.enabled=true, lesion crops (CBIS-DDSM masks,\n"
    "VinDr boxes) are cached too, listed in roi_table.parquet beside table.parquet.\n\n"
    "  mvmlm preprocess --table tables/vindr.parquet --root /data/vindr-mammo --out cache --workers 8",
    flags=(("table", "table"), ("root", "root"), ("out", "out"), ("workers", "workers")),
)
INFO = Command(
    name="info",
    summary="package versions and whether CUDA, mamba-ssm kernels and vLLM are usable",
    main="mvmlm.info:main",
    config="mvmlm.info:InfoConfig",
)
DEMO = Command(
    name="demo",
    summary="run the toolkit end to end on built-in synthetic data",
    main="mvmlm.demo:main",
    config="mvmlm.demo:DemoConfig",
    description="Synthetic exams -> canonical table -> image cache -> reports -> tiny pretraining -> probe,\n"
    "four-view classifier and risk, on CPU in minutes; everything lands in one run directory (out).",
)
