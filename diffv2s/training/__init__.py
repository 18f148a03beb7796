"""The DiffV2S training recipe: cache -> visual encoder -> speaker extractor -> denoiser -> checkpoint.

`diffv2s train --data DIR --out RUN` runs it (see `diffv2s.training.cli`); `diffv2s.training.recipe`
holds the stages' order and time budget.
"""
