from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "inventories" / "sample"


@pytest.fixture
def write_inv(tmp_path):
    """Write an inventory text to a tmp file and return its path."""
    def _write(text: str, name: str = "cluster.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p
    return _write
