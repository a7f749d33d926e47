"""kdeploy.verify"""
