"""The meshelect gateway: ingest of leaders' batches (fencing, dedup), storage, HTTP API, live
feed, metrics and the dashboard. CPython only. Entry point: :func:`gateway.cli.cli`."""
