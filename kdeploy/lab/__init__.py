"""kdeploy.lab"""
