"""kdeploy.artifacts"""
