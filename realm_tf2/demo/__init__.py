"""The end-to-end demo (run_demo.py, notebooks/realm_demo.ipynb)."""
