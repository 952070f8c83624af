"""The KaVa inference server: HTTP API, engine thread with iteration-level batching, metrics.

Layout (one noun per module): `settings` (KAVA_* knobs), `schemas` (wire formats),
`errors` (the error envelope), `middleware` (request id, arrival time), `batch` (a job,
the running batch and a step's output as values), `runner` (the model side: adapters and
one forward pass of `kava.running`), `engine` (the thread, queue and batching),
`async_engine` (the engine as the event loop awaits it: jobs, deadlines, token streams),
`stats` (plain records), `metrics` (the only prometheus_client user), `context` (what the
handlers share), `routes` (handlers), `app` (`create_app`) and `cli` (`kava serve`).
Imports `kava/`, never `training/`, `clients/` or `benchmarks/` (`kava bench` lives in
`benchmarks/`).
"""
