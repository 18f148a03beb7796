"""The paper's published figures, as data, so an LRS3 evaluation puts them beside this model's.

Source: Jeongsoo Choi, Joanna Hong, Yong Man Ro, "DiffV2S: Diffusion-based Video-to-Speech Synthesis with
Vision-guided Speaker Embedding", ICCV 2023, arXiv 2308.07787, Table 1 (comparison on LRS2 and LRS3).

Only figures confirmed from the paper are written here. The LRS3 WER of DiffV2S (39.2 %) is the one this
project could confirm; the table's other cells (STOI, ESTOI, PESQ, speaker similarity, the LRS2 column and
the baselines' rows) could not be read from a copy of the paper available to this work, so they are left
out rather than quoted from memory or from secondary summaries. `UNCONFIRMED` says so in every report; add
a row here (with the table's own printed value) once it is checked against the paper.

Units follow the harness: WER as a fraction (the paper prints percent), STOI/ESTOI in [0, 1], PESQ as MOS.
The paper's WER comes from its own ASR on the generated speech, not from the Whisper base model this harness
runs: compare the two as orders of magnitude, not to the decimal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CITATION = (
    "Choi, Hong, Ro: DiffV2S: Diffusion-based Video-to-Speech Synthesis with Vision-guided Speaker "
    "Embedding, ICCV 2023 (arXiv 2308.07787), Table 1"
)
PAPER_URL = "https://arxiv.org/abs/2308.07787"

# The metrics of the comparison table, in order: (key in a system entry, header, format).
COMPARED: tuple[tuple[str, str, str], ...] = (
    ("wer", "WER ↓", "{:.3f}"),
    ("stoi", "STOI ↑", "{:.3f}"),
    ("estoi", "ESTOI ↑", "{:.3f}"),
    ("pesq", "PESQ ↑", "{:.2f}"),
    ("secs", "speaker sim. ↑", "{:.3f}"),
)

UNCONFIRMED = (
    "Of the paper's Table 1 only DiffV2S's LRS3 WER (39.2 %) is confirmed here; its STOI, ESTOI, PESQ and "
    "speaker-similarity cells, its LRS2 column and the baselines' rows could not be read from a copy of the "
    "paper available to this work and are left out (–), not guessed."
)


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's table on one dataset. `metrics` in the harness's units; `printed` as the
    paper prints each figure."""

    dataset: str
    system: str
    metrics: dict[str, float] = field(default_factory=dict)
    printed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "system": self.system,
            "metrics": dict(self.metrics),
            "printed": dict(self.printed),
        }


PAPER_TABLE: tuple[PaperRow, ...] = (
    PaperRow("LRS3", "DiffV2S", metrics={"wer": 0.392}, printed={"wer": "39.2 %"}),
)


def paper_rows(dataset: str) -> list[PaperRow]:
    """The paper's rows on `dataset` ("LRS3", "LRS2"); empty when the table has none confirmed."""
    return [row for row in PAPER_TABLE if row.dataset.lower() == dataset.lower()]


def paper_section(dataset: str) -> dict[str, Any]:
    """What a report carries about the paper: the citation, the confirmed rows, what is missing and why."""
    return {
        "citation": CITATION,
        "url": PAPER_URL,
        "dataset": dataset,
        "rows": [row.to_dict() for row in paper_rows(dataset)],
        "wer_asr": "the paper's own ASR (this harness's WER is Whisper base): compare orders of magnitude",
        "unconfirmed": UNCONFIRMED,
    }


def comparison_table(report: dict[str, Any]) -> list[str]:
    """Markdown lines: the paper's rows beside this model (and its ground truth / vocoder ceiling), on the
    metrics of `COMPARED`. This model's WER is the open-vocabulary (Whisper) WER."""
    paper = report.get("paper") or {}
    lines = [
        f"### Against the paper on {paper.get('dataset', '?')} ({paper.get('citation', CITATION)})",
        "",
        "| system | " + " | ".join(h for _, h, _ in COMPARED) + " |",
        "|---|" + "---:|" * len(COMPARED),
    ]

    def cell(value: Any, fmt: str) -> str:
        return "–" if value is None else fmt.format(value)

    for row in paper.get("rows", []):
        cells = [cell(row["metrics"].get(key), fmt) for key, _, fmt in COMPARED]
        lines.append(f"| paper: {row['system']} | " + " | ".join(cells) + " |")
    for name, label in (
        ("model", "this model"),
        ("vocoder_ceiling", "this model's vocoder ceiling"),
        ("ground_truth", "ground truth (the clips' own audio)"),
    ):
        entry = report.get(name)
        if entry is None:
            continue
        values = {key: entry.get(key) for key, _, _ in COMPARED}
        values["wer"] = entry.get("wer_whisper")
        cells = [cell(values[key], fmt) for key, _, fmt in COMPARED]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"WER: the paper's with {paper.get('wer_asr', 'its own ASR')}; this model's with Whisper base. "
        "Speaker similarity: this harness's SECS (resemblyzer GE2E).",
        "",
        paper.get("unconfirmed", UNCONFIRMED),
    ]
    return lines
