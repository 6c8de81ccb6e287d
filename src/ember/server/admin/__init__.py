"""Operating the server: health, Prometheus metrics, and serving LoRA adapters as models."""
