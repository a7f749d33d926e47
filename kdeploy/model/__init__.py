"""Cluster model: typed inventory, defaults, validation, loading."""
from kdeploy.model.cluster import Cluster, Host, Role
from kdeploy.model.load import load_inventory
from kdeploy.model.validate import Problem

__all__ = ["Cluster", "Host", "Role", "Problem", "load_inventory"]
