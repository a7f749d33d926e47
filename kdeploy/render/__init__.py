"""kdeploy.render: every text file kdeploy places on hosts, rendered from templates/."""
from __future__ import annotations

from kdeploy.render.addons import addons_host, render_addons
from kdeploy.render.host import render_all, render_host

__all__ = ["render_host", "render_all", "render_addons", "addons_host"]
