"""LoRA adapters: PEFT-format I/O, per-row multi-adapter application in the forward, trainable layers, and
the registry that loads and evicts adapters for the engine."""
