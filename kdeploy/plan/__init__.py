"""kdeploy.plan"""
