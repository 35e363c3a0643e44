"""`cifarbench report PATH...`: runs compared in tables, overlaid curves and one HTML page.

columns.py     one row per run: the columns of 000's Table 1 and more (`--sort` picks one)
recipes.py     runs that differ only in their seed as one row, mean ± sd over the seeds
comparison.py  each report's own figure against what cifarbench measured
pages.py       the HTML page and the overlaid curves (matplotlib)
build.py       reads the runs and writes report.md/csv, recipes.csv, curves and HTML (or --md)
"""
