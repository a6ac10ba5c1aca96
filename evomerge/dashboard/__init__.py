"""``evomerge dashboard``: a read-only web app over the archive (issue 18).

- :mod:`evomerge.dashboard.archive`: the queries, on an engine that cannot write;
- :mod:`evomerge.dashboard.recipe_view`: recipes as a per-layer heatmap or a layer path strip;
- :mod:`evomerge.dashboard.app`: the HTTP routes and the safety rules (GET only, loopback or a
  token, Host check, strict CSP, no CORS);
- ``static/``: the page script and style; plotly.js is served from the installed plotly wheel.
"""
