"""The GPU proof script runs end to end as a CPU smoke check (`--device cpu --tiny`)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.gpu_paper_proof import main


def test_gpu_proof_script_runs_on_cpu_tiny(tmp_path: Path) -> None:
    out = tmp_path / "proof.json"
    assert main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["train"]) == {"fp32", "bf16"}
    assert result["train"]["bf16"]["steps_per_s"] > 0
    assert result["clip_10s"]["rtf"] > 0
