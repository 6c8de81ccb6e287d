"""Anthropic's Messages API on the same engine, translated onto the chat pipeline."""
