"""kdeploy.execute"""
