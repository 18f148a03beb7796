"""The evaluation report as files: the JSON document, per-utterance rows, and a markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lab.evaluation.paper import comparison_table
from lab.evaluation.text import SLOT_NAMES

# (key, header, format) of the main table; lower is better for WER and MCD.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("wer", "WER (grammar) ↓", "{:.3f}"),
    ("wer_whisper", "WER (Whisper) ↓", "{:.3f}"),
    ("stoi", "STOI ↑", "{:.3f}"),
    ("estoi", "ESTOI ↑", "{:.3f}"),
    ("pesq", "PESQ-wb ↑", "{:.2f}"),
    ("mcd", "MCD dB ↓", "{:.2f}"),
    ("secs", "SECS ↑", "{:.3f}"),
    ("dnsmos", "DNSMOS ↑", "{:.2f}"),
    ("n_utterances", "n", "{}"),
)


def systems_in_order(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, system entry) for the ceilings, the model and every ablation, in table order."""
    rows: list[tuple[str, dict[str, Any]]] = [
        (name, report[name]) for name in ("ground_truth", "vocoder_ceiling", "model") if name in report
    ]
    rows += [(f"ablation: {name}", entry) for name, entry in report.get("ablations", {}).items()]
    return rows


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def markdown_table(report: dict[str, Any]) -> str:
    """Two tables: the metrics per system, then the grammar ASR's accuracy per GRID slot. Without the
    grammar ASR (an LRS3 report) its WER column and the slot table are left out; a report with the paper's
    figures (`report["paper"]`) ends with them beside this model's."""
    meta, model = report.get("meta", {}), report.get("model", {})
    grid = meta.get("grammar_asr", True) is not False
    columns = [c for c in COLUMNS if grid or c[0] != "wer"]
    lines = [
        f"## DiffV2S evaluation: `{meta.get('split', '?')}`"
        + (f" of the {meta['corpus'].upper()} tree" if meta.get("corpus") == "lrs3" else ""),
        "",
        f"checkpoint `{str(meta.get('checkpoint_sha256', ''))[:12]}` "
        f"(trained: {meta.get('checkpoint_trained')}), {model.get('n_utterances', 0)} utterances, "
        f"model sampler {model.get('sampler')}-{model.get('steps')}, CFG scale {model.get('cfg_scale')}, "
        f"noise scale {model.get('noise_scale')}",
        "",
    ]
    refused = meta.get("refused") or {}
    if refused:
        lines += [
            f"refused clips: {sum(refused.values())} ("
            + ", ".join(f"{reason} {n}" for reason, n in refused.items())
            + ")",
            "",
        ]
    lines += [
        "| system | " + " | ".join(h for _, h, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for label, entry in systems_in_order(report):
        cells = [_cell(entry.get(key), fmt) for key, _, fmt in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "paper" in report:
        lines += ["", *comparison_table(report)]
    if not grid:
        return "\n".join(lines) + "\n"
    slots = list(SLOT_NAMES.values())
    lines += [
        "",
        "Grammar-ASR accuracy per slot:",
        "",
        "| system | " + " | ".join(slots) + " | sentence |",
        "|---|" + "---:|" * (len(slots) + 1),
    ]
    for label, entry in systems_in_order(report):
        acc = entry.get("slot_accuracy", {})
        cells = [_cell(acc.get(s), "{:.3f}") for s in slots] + [
            _cell(entry.get("sentence_accuracy"), "{:.3f}")
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    json_path: Path, report: dict[str, Any], utterances: list[dict[str, Any]] | None = None
) -> list[Path]:
    """Write `json_path`, `<stem>.md` beside it and, given rows, `<stem>.utterances.jsonl`. Returns the paths."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    written = [json_path]
    if "model" in report:
        md = json_path.with_suffix(".md")
        md.write_text(markdown_table(report))
        written.append(md)
    if utterances is not None:
        rows = json_path.with_name(json_path.stem + ".utterances.jsonl")
        rows.write_text("".join(json.dumps(_finite(u)) + "\n" for u in utterances))
        written.append(rows)
    return written


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN; an undefined per-utterance metric is written as null.
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
