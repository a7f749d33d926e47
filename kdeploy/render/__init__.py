"""kdeploy.render"""
