"""A small hand-built canonical table covering the cases the report pipeline must handle."""

from __future__ import annotations

import pandas as pd
import pytest

from mvmlm.data import schema
from report_synthesis.facts import DEFAULT_FIELDS, FIELDS, BreastFacts, breast_facts

NA = pd.NA


def _breast(patient, exam, side, views, **labels) -> list[dict]:
    return [
        {
            "dataset": "toy",
            "patient_id": patient,
            "exam_id": exam,
            "image_id": f"{exam}_{side}_{view}",
            "path": f"{exam}/{side}_{view}.dcm",
            "laterality": side,
            "view": view,
            "split": "train",
            **labels,
        }
        for view in views
    ]


def toy_table() -> pd.DataFrame:
    """Six breasts: malignant mass + calcifications, normal, unknown everything (one view), benign mass,
    CBIS-style joined descriptors with architectural distortion, and calcifications only."""
    rows = [
        *_breast(
            "PAT-0001",
            "EX-0001",
            "L",
            ["CC", "MLO"],
            age=61.4,
            birads=4,
            density="C",
            malignant=1,
            mass=1,
            calcification=1,
            mass_shape="irregular",
            mass_margin="spiculated",
            calc_morphology="fine pleomorphic",
            calc_distribution="segmental",
            pathology="malignant",
            other_findings="architectural distortion",
        ),
        *_breast(
            "PAT-0001",
            "EX-0001",
            "R",
            ["CC", "MLO"],
            age=61.4,
            birads=1,
            density="C",
            malignant=0,
            mass=0,
            calcification=0,
            pathology="normal",
        ),
        *_breast("PAT-0002", "EX-0002", "L", ["CC"]),
        *_breast(
            "PAT-0002",
            "EX-0002",
            "R",
            ["CC", "MLO"],
            age=48.0,
            birads=2,
            density="B",
            mass=1,
            calcification=0,
            mass_shape="oval",
            mass_margin="circumscribed",
            pathology="benign",
            other_findings="",
        ),
        *_breast(
            "PAT-0003",
            "EX-0003",
            "L",
            ["MLO", "CC"],
            age=70.0,
            birads=5,
            density="D",
            mass=1,
            calcification=0,
            mass_shape="IRREGULAR-ARCHITECTURAL_DISTORTION",
            mass_margin="SPICULATED",
        ),
        *_breast(
            "PAT-0003",
            "EX-0003",
            "R",
            ["CC", "MLO"],
            age=70.0,
            birads=3,
            density="D",
            mass=0,
            calcification=1,
            calc_morphology="PUNCTATE",
            calc_distribution="CLUSTERED",
        ),
    ]
    return schema.conform(pd.DataFrame(rows))


@pytest.fixture
def toy() -> pd.DataFrame:
    """A fresh copy of the toy canonical table."""
    return toy_table()


@pytest.fixture(scope="session")
def table_path(tmp_path_factory):
    """The toy table written as a canonical parquet file."""
    return schema.write_table(toy_table(), tmp_path_factory.mktemp("table") / "toy.parquet")


@pytest.fixture(scope="session")
def all_facts() -> dict[str, BreastFacts]:
    """breast id -> facts with every field selected (pathology included)."""
    return {f.breast_id: f.select(FIELDS) for f in breast_facts(toy_table())}


@pytest.fixture(scope="session")
def facts(all_facts) -> dict[str, BreastFacts]:
    """breast id -> facts with the default fields."""
    return {key: f.select(DEFAULT_FIELDS) for key, f in all_facts.items()}
