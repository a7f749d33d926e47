"""kdeploy: turn bare Linux machines into a Kubernetes cluster over SSH."""

__version__ = "0.1.0"
