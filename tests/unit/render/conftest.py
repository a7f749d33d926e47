from __future__ import annotations

from pathlib import Path

import pytest

from kdeploy.model.load import load_inventory

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "inventories" / "sample"
SAMPLE_NAMES = ("single-node", "cluster", "ha")


def load_sample(name: str):
    cluster, _ = load_inventory(SAMPLES / f"{name}.yaml")
    return cluster


@pytest.fixture(params=SAMPLE_NAMES)
def sample(request):
    return request.param, load_sample(request.param)
