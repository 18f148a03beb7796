"""The DiffV2S training recipe: cache -> visual encoder -> speaker extractor -> denoiser -> checkpoint.

`diffv2s train --data DIR --out RUN` runs it (see `lab.training.cli`). `recipe` holds the steps' order,
`options` what a run can be told, `run_folder` where everything lands, `budgets` the minutes each stage
gets, `cache_step` and `stages` what each step reads and writes, `export` the final checkpoint.
"""
