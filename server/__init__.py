"""The KaVa inference server: HTTP API, engine thread with dynamic batching, metrics.

Layout (one noun per module): `settings` (KAVA_* knobs), `schemas` (wire formats),
`errors` (the error envelope), `middleware` (request id, arrival time), `batch` (a job
and a batch as values), `runner` (the model side: adapters and one `solve_batch` step),
`engine` (the thread, queue and batching), `stats` (plain records), `metrics` (the only
prometheus_client user), `routes` (handlers), `app` (`create_app`), `cli` (`kava serve`)
and `bench*` (`kava bench`). Imports `kava/`, never `training/` or `clients/`.
"""
