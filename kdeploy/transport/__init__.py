"""kdeploy.transport"""
