"""Synthetic audio-visual corpus: GRID sentences, real speech engines, faces whose mouths follow the
engine's own phone timings. Entry points: `make_corpus` (make.py), `corpus_main` (cli.py), LRS3 layout
(lrs3.py).
"""
