"""Synthetic ground truth: exams, breasts and images with label-consistent findings and acquisition quirks.

:func:`sample_exams` draws one row per image in the canonical schema (``dataset="synthetic"``, generic ids) plus
the extra columns the renderer and the format writers need:

- ``lesion_x``, ``lesion_y``: centre of the breast's lesion as fractions of image width / height in canonical
  orientation (chest wall on the left); the MLO value is the CC value shifted by :data:`VIEW_SHIFT`.
- ``lesion_size``: lesion diameter (mass) or cluster spread (calcifications) as a fraction of the image width.
- ``photometric``, ``voi_function``, ``transfer_syntax``, ``bits_stored``: how the writer stores the file.

Label rules (what a model can learn from the pixels): malignant masses are irregular and spiculated, benign masses
oval/round and circumscribed; malignant calcifications are fine pleomorphic / fine linear branching in a linear or
segmental spread, benign ones punctate / round and grouped or regional; BI-RADS is 1 for normal breasts, 2-3 for
benign and 4-5 for malignant ones. Risk follow-up uses the Mirai convention in float years: an exam with a cancer
now has ``years_to_cancer = 0``; otherwise a future cancer time is drawn from an exponential hazard that grows with
density and with a visible benign lesion, and censored by a uniform follow-up time (``years_to_cancer`` NA when
no cancer was seen; ``years_to_last_followup`` = years known cancer-free).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mvmlm.data import schema
from mvmlm.data.splits import source_less_split

__all__ = [
    "DENSITIES",
    "EXPLICIT_VR_LE",
    "JPEG2000_LOSSLESS",
    "JPEG_LS_LOSSLESS",
    "MASS_SHAPES",
    "MASS_MARGINS",
    "CALC_MORPHOLOGIES",
    "CALC_DISTRIBUTIONS",
    "VIEW_SHIFT",
    "sample_exams",
]

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"

DENSITIES = ("A", "B", "C", "D")
DENSITY_P = (0.12, 0.38, 0.35, 0.15)
PATHOLOGIES = ("normal", "benign", "malignant")
PATHOLOGY_P = (0.6, 0.22, 0.18)
#: finding kinds of a lesioned breast and their probabilities
KINDS = ("mass", "calcification", "both")
KIND_P = (0.5, 0.25, 0.25)

#: BI-RADS lexicon words, keyed by pathology (benign / malignant)
MASS_SHAPES = {"benign": ("oval", "round"), "malignant": ("irregular",)}
MASS_MARGINS = {"benign": ("circumscribed",), "malignant": ("spiculated",)}
CALC_MORPHOLOGIES = {"benign": ("punctate", "round"), "malignant": ("fine pleomorphic", "fine linear branching")}
CALC_DISTRIBUTIONS = {"benign": ("grouped", "regional"), "malignant": ("linear", "segmental")}
BIRADS = {"normal": ((1,), (1.0,)), "benign": ((2, 3), (0.7, 0.3)), "malignant": ((4, 5), (0.7, 0.3))}

#: lesion centre shift (dx, dy) of a view relative to CC, in image fractions (the MLO projection lifts it)
VIEW_SHIFT = {"CC": (0.0, 0.0), "MLO": (0.02, -0.06)}
VIEWS = ("CC", "MLO")

PHOTOMETRIC = (("MONOCHROME2", "MONOCHROME1"), (0.8, 0.2))
VOI = ((None, "LINEAR", "SIGMOID"), (0.35, 0.4, 0.25))
SYNTAX = ((EXPLICIT_VR_LE, JPEG2000_LOSSLESS, JPEG_LS_LOSSLESS), (0.6, 0.25, 0.15))
BITS = ((12, 14, 16), (0.5, 0.3, 0.2))
P_MISSING_VIEW = 0.05

#: yearly hazard of a future cancer: BASE * exp(DENSITY_LOG_HR * density index + BENIGN_LOG_HR * benign lesion)
BASE_HAZARD, DENSITY_LOG_HR, BENIGN_LOG_HR = 0.03, 0.7, 1.0
FOLLOWUP_YEARS = (1.0, 8.0)


def _choice(rng: np.random.Generator, options: tuple, p: tuple, size: int) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.choice(len(options), size=size, p=p)]


def _pick(rng: np.random.Generator, table: dict[str, tuple], pathology: np.ndarray, present: np.ndarray) -> list:
    """One descriptor word per breast from ``table[pathology]`` where ``present``, else None."""
    return [table[p][rng.integers(len(table[p]))] if ok else None for p, ok in zip(pathology, present, strict=True)]


def _breasts(rng: np.random.Generator, n_exams: int) -> pd.DataFrame:
    """Breast-level labels and lesion geometry: rows are (exam 0 L, exam 0 R, exam 1 L, ...)."""
    n = 2 * n_exams
    pathology = _choice(rng, PATHOLOGIES, PATHOLOGY_P, n)
    kind = _choice(rng, KINDS, KIND_P, n)
    if n_exams >= 8:  # every finding type present: a malignant mass+calc breast, a benign mass, a benign calc
        pathology[[10, 13, 14]] = ["malignant", "benign", "benign"]
        kind[[10, 13, 14]] = ["both", "mass", "calcification"]
    lesioned = pathology != "normal"
    mass = lesioned & (kind != "calcification")
    calc = lesioned & (kind != "mass")
    birads = [BIRADS[p][0][rng.choice(len(BIRADS[p][0]), p=BIRADS[p][1])] for p in pathology]
    radius, angle = rng.uniform(0.3, 0.65, n), rng.uniform(-0.6, 0.9, n)  # polar position inside the breast
    return pd.DataFrame(
        {
            "pathology": pathology,
            "malignant": (pathology == "malignant").astype(int),
            "birads": birads,
            "mass": mass.astype(int),
            "calcification": calc.astype(int),
            "mass_shape": _pick(rng, MASS_SHAPES, pathology, mass),
            "mass_margin": _pick(rng, MASS_MARGINS, pathology, mass),
            "calc_morphology": _pick(rng, CALC_MORPHOLOGIES, pathology, calc),
            "calc_distribution": _pick(rng, CALC_DISTRIBUTIONS, pathology, calc),
            "lesion_x": np.where(lesioned, np.round(0.8 * radius * np.cos(angle), 4), np.nan),
            "lesion_y": np.where(lesioned, np.round(0.5 + 0.42 * radius * np.sin(angle), 4), np.nan),
            "lesion_size": np.where(lesioned, np.round(rng.uniform(0.08, 0.14, n), 4), np.nan),
        }
    )


def _follow_up(rng: np.random.Generator, density: np.ndarray, breasts: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """Exam-level (years_to_cancer, years_to_last_followup), Mirai convention in float years."""
    pairs = breasts.assign(exam=np.repeat(np.arange(len(density)), 2)).groupby("exam")
    cancer_now = pairs.malignant.max().to_numpy() == 1
    benign = pairs.pathology.agg(lambda s: (s == "benign").any()).to_numpy()
    index = np.searchsorted(DENSITIES, density)
    hazard = BASE_HAZARD * np.exp(DENSITY_LOG_HR * index + BENIGN_LOG_HR * benign)
    onset = np.maximum(np.round(rng.exponential(1.0 / hazard), 2), 0.05)
    censor = np.round(rng.uniform(*FOLLOWUP_YEARS, len(density)), 2)
    seen = ~cancer_now & (onset <= censor)
    years_to_cancer = np.where(cancer_now, 0.0, np.where(seen, onset, np.nan))
    years_to_followup = np.where(cancer_now, 0.0, np.where(seen, onset, censor))
    return years_to_cancer, years_to_followup


def _acquisition(rng: np.random.Generator, n_exams: int) -> pd.DataFrame:
    """Per-exam storage quirks; with >= 8 exams each required quirk is planted in a distinct exam."""
    acq = pd.DataFrame(
        {
            "photometric": _choice(rng, *PHOTOMETRIC, n_exams),
            "voi_function": _choice(rng, *VOI, n_exams),
            "transfer_syntax": _choice(rng, *SYNTAX, n_exams),
            "bits_stored": _choice(rng, *BITS, n_exams).astype(int),
            "missing_view": rng.random(n_exams) < P_MISSING_VIEW,
        }
    )
    if n_exams >= 8:
        planted = rng.permutation(n_exams)[:5]
        acq.loc[planted[0], "photometric"] = "MONOCHROME1"
        acq.loc[planted[1], "voi_function"] = "SIGMOID"
        acq.loc[planted[2], "transfer_syntax"] = JPEG2000_LOSSLESS
        acq.loc[planted[3], "transfer_syntax"] = JPEG_LS_LOSSLESS
        acq.loc[planted[4], "missing_view"] = True
    return acq


def sample_exams(n_exams: int, seed: int) -> pd.DataFrame:
    """Draw ``n_exams`` screening exams (one patient each, four views unless one is missing); one row per image.

    Deterministic for a given ``(n_exams, seed)``. See the module docstring for the label rules and extra columns.
    """
    if n_exams < 1:
        raise ValueError(f"n_exams must be >= 1, got {n_exams}")
    rng = np.random.default_rng(seed)
    density = _choice(rng, DENSITIES, DENSITY_P, n_exams)
    age = rng.integers(40, 81, n_exams).astype(float)
    breasts = _breasts(rng, n_exams)
    years_to_cancer, years_to_followup = _follow_up(rng, density, breasts)
    acq = _acquisition(rng, n_exams)
    dropped_slot = rng.integers(4, size=n_exams)

    exam = np.repeat(np.arange(n_exams), 4)
    breast = np.repeat(np.arange(2 * n_exams), 2)
    lat = np.tile(np.repeat(["L", "R"], 2), n_exams)
    view = np.tile(VIEWS * 2, n_exams)
    patient_ids = np.array([f"P{i:05d}" for i in range(n_exams)], dtype=object)
    exam_ids = np.array([f"E{i:05d}" for i in range(n_exams)], dtype=object)
    rows = pd.DataFrame(
        {
            "dataset": "synthetic",
            "patient_id": patient_ids[exam],
            "exam_id": exam_ids[exam],
            "image_id": [f"{e}_{la}_{v}" for e, la, v in zip(exam_ids[exam], lat, view, strict=True)],
            "laterality": lat,
            "view": view,
            "age": age[exam],
            "density": density[exam],
            "years_to_cancer": years_to_cancer[exam],
            "years_to_last_followup": years_to_followup[exam],
        }
    )
    rows["path"] = rows.image_id + ".dcm"
    rows = pd.concat([rows, breasts.iloc[breast].reset_index(drop=True), acq.iloc[exam].reset_index(drop=True)], axis=1)
    shift = np.array([VIEW_SHIFT[v] for v in view])
    rows["lesion_x"] = (rows.lesion_x + shift[:, 0]).round(4)
    rows["lesion_y"] = (rows.lesion_y + shift[:, 1]).round(4)
    keep = ~(acq.missing_view.to_numpy()[exam] & (np.tile(np.arange(4), n_exams) == dropped_slot[exam]))
    rows = rows[keep].drop(columns="missing_view").reset_index(drop=True)
    rows["split"] = source_less_split(rows.patient_id, seed=seed, val_fraction=0.1)
    rows = schema.conform(rows)
    rows["voi_function"] = rows.voi_function.astype(object).where(rows.voi_function.notna(), None)
    return rows
