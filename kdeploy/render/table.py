"""The file table: every file kdeploy renders onto hosts, as data, gathered from the
components (kdeploy.components: one module per component). render_host() walks FILES;
docs/render.md describes the same table."""
from __future__ import annotations

from kdeploy.components import COMPONENTS, HostPred, Row, file_rows

__all__ = ["FILES", "UNITS", "Row", "HostPred"]

FILES: tuple[Row, ...] = tuple(r for _, r in file_rows())

# (unit, phase, hosts) in start order
UNITS: tuple[tuple[str, str, HostPred], ...] = tuple(
    (u, c.phase, c.on) for c in COMPONENTS for u in c.units)
