"""kdeploy.facts"""
