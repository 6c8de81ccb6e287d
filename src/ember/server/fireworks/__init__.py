"""Fireworks control plane: models and deployed LoRA adapters over what ember serves."""
