"""Offline tooling beside the serving library: the synthetic corpus, the training recipe, the evaluation harness."""
