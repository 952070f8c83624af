"""Benchmarks of KaVa inference: `kava bench` (`benchmarks.cli`).

A benchmark reports; a test asserts — there is never a timing inside a test. This part
imports the library (`kava`), the SDK (`kava_client`) and the built-in task's held-out
questions (`training.data.task`); nothing imports it. Modules: `questions` (what is asked),
`engine` (latent vs CoT vs HF `generate` in one process), `serving` (load against running
servers), `gpu` (the prepared CUDA run), `cli` (`kava bench`).
"""
