"""Lifecycle verbs: each an orchestration over the one engine (kdeploy.execute), called by the
thin CLI (kdeploy.cli), which only parses options and prints."""
