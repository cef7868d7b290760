"""Human pairwise evaluation: a local web page asks raters which of two faces looks more real.

faces.py (where faces come from), session.py (drawing pairs), store.py (SQLite), app.py (FastAPI +
the static page in static/), bradley_terry.py and results.py (the statistics). Started by
`ganray eval human serve`; `ganray eval human results DB` reports.
"""
