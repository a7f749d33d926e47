"""kdeploy.pki"""
