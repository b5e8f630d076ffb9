"""Presentation and bookkeeping of model results.

- :mod:`paracell.reports.store`: the SQLite results store and ``--save``.
- :mod:`paracell.reports.sweep`: grids of cells run on a process pool or Dask.
- :mod:`paracell.reports.chrome_trace`: the latency replay as Chrome trace events.
- :mod:`paracell.reports.html`: the self-contained HTML report.
- :mod:`paracell.reports.browser`: a headless Chromium driver used to check the report.

Heavy libraries (matplotlib, dask) are imported inside the functions that
need them, so importing this package stays cheap.
"""
