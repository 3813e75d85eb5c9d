"""Run control and reports: the driver's runtime (Prefect API, Ray), status, the live progress
view, verify, notebooks.
"""
