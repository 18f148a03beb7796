"""The DiffV2S training recipe: cache -> visual encoder -> speaker extractor -> denoiser -> checkpoint.

`diffv2s train --data DIR --out RUN` runs it (see `lab.training.cli`); `lab.training.recipe`
holds the stages' order and time budget.
"""
