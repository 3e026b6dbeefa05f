"""Analysis of stored results: tidy tables, seaborn figures, reports, comparisons.

Reads results through :mod:`imp.base.store` only and never imports training code.
"""
