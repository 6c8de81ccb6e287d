"""Batches: OpenAI's /v1/batches and Fireworks' batchInferenceJobs, run at background priority beside live traffic."""
