"""Speculative decoding without a draft model: drafts from the request's prediction or from n-gram lookup,
verified k + 1 tokens at a time in one forward (docs/decisions.md, "Speculative decoding")."""
