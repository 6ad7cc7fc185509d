"""H&E → gene-expression kit: data, metric, CV, models and submission helpers.

Importing `utils` is cheap: heavy libraries (torch, timm, umap, …) are imported inside the
functions that need them.
"""
