"""Analysis of stored results: tidy tables, seaborn figures, reports, comparisons.

Reads results through :mod:`imp.store` only and never imports training code.
"""
