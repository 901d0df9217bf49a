"""The core's commands (entry points of the group ``mvmlm.commands``); a light module, imported by ``mvmlm --help``."""

from mvmlm.cli import Command

__all__ = ["SYNTH_DATA", "TABLES", "SPLIT", "PREPROCESS", "INFO", "DEMO", "REPORT"]

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
    main="mvmlm.data.preprocess_command:main",
    config="mvmlm.data.preprocess_command:PreprocessConfig",
    overwritable=False,  # OUT is a root of caches keyed by their inputs: a rerun resumes, it never overwrites
    description="Decodes every DICOM of a canonical table (VOI LUT, MONOCHROME1, chest wall left), crops to the\n"
    "breast, resizes keeping the aspect ratio and caches a 16-bit file per image (cache_format: npy, png16 or\n"
    "blosc2) in OUT/<H>x<W>-<hash>/. Resumable; unreadable files are listed in failures.csv. With roi.enabled=true,\n"
    "lesion crops (CBIS-DDSM masks, VinDr boxes) are cached too, listed in roi_table.parquet beside table.parquet.\n"
    "On a cluster: one run per shard (--shard-id I --num-shards N), then the same command with --merge.\n\n"
    "  mvmlm preprocess --table tables/vindr.parquet --root /data/vindr-mammo --out cache --workers 8",
    flags=(
        ("table", "table"),
        ("root", "root"),
        ("out", "out"),
        ("workers", "workers"),
        ("shard-id", "shard_id"),
        ("num-shards", "num_shards"),
    ),
    switches=(("merge", "merge"),),
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
REPORT = Command(
    name="report",
    summary="one self-contained HTML page (images embedded) from a run directory's outputs",
    main="mvmlm.report:main",
    config="mvmlm.report.config:ReportConfig",
    description="Reads what a run directory (a demo's, or one command's: pretrain, probe, multiview, risk, reports)\n"
    "and its sub-folders hold and writes RUN_DIR/report.html: counts and contact sheet, example reports beside\n"
    "their facts, pretraining curves, probe / four-view / risk tables with 95 % CIs and a verdict against chance\n"
    "beside each number, plots, time per stage. Opens from disk, needs no network.\n\n"
    "  mvmlm report runs/demo\n  mvmlm report runs/probe/vindr out=probe.html",
)
PREDICT = Command(
    name="predict",
    summary="probabilities for new DICOM exams (files, folders or a table) from a model bundle",
    main="mvmlm.inference.predict:main",
    config="mvmlm.inference.config:PredictConfig",
    description="Groups DICOM files into exams and breasts from their headers, preprocesses them as the bundle says\n"
    "and writes OUT/predictions.csv + .parquet (one row per breast; per exam too for four-view models; columns\n"
    "prob_<head>_<class>; zero-shot tasks for MV-CLIP bundles, prompts from the bundle or --prompts FILE.yaml) and\n"
    "OUT/skipped.csv (file, reason); --explain adds a heatmap per view in OUT/heatmaps (mvmlm explain's).\n"
    "Research use only, not a medical device.\n\n"
    "  mvmlm predict --model runs/finetune/models/unit --input /data/new_exams --out runs/predict",
    flags=(
        ("model", "model"),
        ("out", "out"),
        ("device", "device"),
        ("workers", "workers"),
        ("rois", "rois"),
        ("prompts", "prompts"),
        ("covariates", "covariates"),
        ("format", "format"),
        ("root", "root"),
    ),
    list_flags=(("input", "input"),),
    switches=(("allow-for-processing", "allow_for_processing"), ("explain", "explain")),
)
EMBED = Command(
    name="embed",
    summary="per-view and per-breast embeddings of new DICOM exams from a bundle's image tower",
    main="mvmlm.inference.embed:main",
    config="mvmlm.inference.config:EmbedConfig",
    description="Writes OUT (parquet): one row per view (level=view) and per breast (level=breast, views pooled)\n"
    "with ids and the embedding, plus skipped.csv beside it.\n\n"
    "  mvmlm embed --model runs/pretrain/model --input /data/new_exams --out runs/embeddings.parquet",
    flags=(("model", "model"), ("out", "out"), ("device", "device"), ("workers", "workers")),
    list_flags=(("input", "input"),),
    switches=(("allow-for-processing", "allow_for_processing"),),
)
PUSH = Command(
    name="push",
    summary="upload a model bundle to the Hugging Face Hub (checked against its manifest first)",
    main="mvmlm.inference.push:main",
    config="mvmlm.inference.config:PushConfig",
    description="  mvmlm push --model runs/finetune/models/unit --repo-id ORG/NAME [--private]\n"
    "      [--include-text-encoder]\n"
    "The token comes from HF_TOKEN or `hf auth login`. --include-text-encoder first copies the frozen text encoder\n"
    "(MV-CLIP, co-attention) into the bundle, so that loading it never touches the Hub (air-gapped sites).",
    flags=(("model", "model"), ("repo-id", "repo_id")),
    switches=(("private", "private"), ("include-text-encoder", "include_text_encoder")),
)
EXPLAIN = Command(
    name="explain",
    summary="heatmaps per view (Grad-CAM, Grad-CAM++, MV-CLIP text-prompt maps) for new DICOM exams",
    main="mvmlm.inference.explain:main",
    config="mvmlm.inference.explain_config:ExplainConfig",
    description="Reads exams as `mvmlm predict` does and writes, per view, the heatmap OUT/<unit>_<slot>.npy (H x W\n"
    "in [0, 1], preprocessed image pixels) and its overlay .png, listed in OUT/explanations.csv (target class or\n"
    "prompt, score, four-view attention weight). Classifier bundles: Grad-CAM on the encoder's last feature map;\n"
    "MV-CLIP bundles: similarity to prompt=TEXT, else one map per zero-shot class (prompts=FILE.yaml or the bundle's\n"
    "prompt ensemble). Research use only, not a medical device.\n\n"
    "  mvmlm explain --model runs/finetune/models/unit --input /data/new_exams --out runs/explain method=gradcam++",
    flags=(("model", "model"), ("out", "out"), ("device", "device"), ("prompt", "prompt")),
    list_flags=(("input", "input"),),
    switches=(("allow-for-processing", "allow_for_processing"),),
)
EXPORT = Command(
    name="export",
    summary="a bundle's image model (with its heads) as ONNX, checked against PyTorch with onnxruntime",
    main="mvmlm.inference.export:main",
    config="mvmlm.inference.export_config:ExportConfig",
    description="Writes OUT/model.onnx (inputs: views preprocessed as `mvmlm predict` feeds them, dynamic batch N;\n"
    "fine-tuned classifiers: per-view embedding and logits; MV-CLIP: the image embedding; four-view: exams + view\n"
    "mask -> per-side logits and attention; dual-stream: views (+ crops) and masks -> logits) and OUT/export.json\n"
    "with the inputs, outputs and max abs difference to PyTorch. Selective-scan encoders (vssm, ...) are refused.\n"
    "Needs: pip install 'mvmlm[export]'.\n\n"
    "  mvmlm export --model runs/finetune/models/unit --out runs/export",
    flags=(("model", "model"), ("out", "out"), ("format", "format")),
)
SERVE = Command(
    name="serve",
    summary="a web viewer (Gradio): one exam's four views with heatmaps and probabilities, from a model bundle",
    main="mvmlm.inference.serve:main",
    config="mvmlm.inference.serve_config:ServeConfig",
    description="Upload the DICOM files of one exam (or pick a synthetic example exam) and see R-CC, L-CC / R-MLO,\n"
    "L-MLO as hung (chest walls facing each other), each with a heatmap to toggle, the probabilities per head and\n"
    "side (zero-shot scores for MV-CLIP bundles, nearest reports of --corpus DIR) and the files not used, with why.\n"
    "Binds to 127.0.0.1; --share (a public Gradio link) is off. Needs: pip install 'mvmlm[serve]'.\n"
    "Research use only, not a medical device.\n\n"
    "  mvmlm serve --model runs/finetune/models/unit --port 7860",
    flags=(("model", "model"), ("host", "host"), ("port", "port"), ("corpus", "corpus"), ("device", "device")),
    switches=(("share", "share"),),
)
