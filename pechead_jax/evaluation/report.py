"""Evaluation reports: the tables laid out like the paper's, as Markdown, from the JSON result.

Each protocol's table has the paper's columns in the paper's order (Tables 1-3), then the
columns we add, after a `‖` separator column. Table 4 (`ablation_table`) has L1 and FID from
reconstruction and CSIM, ARD and FVD from cross-identity, one row per variant.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np

# Direction of "better" and the column title of each metric.
TITLES = {
    "l1": "L1 ↓", "psnr": "PSNR ↑", "ms_ssim": "MS-SSIM ↑", "lpips": "LPIPS ↓", "fid": "FID ↓",
    "fvd": "FVD ↓", "akd": "AKD ↓", "ard": "ARD ↓", "auh": "AUH ↓", "csim": "CSIM ↑",
    "are": "ARE ↓",
}  # fmt: skip
# (the paper's columns in its order, the columns we add) per protocol.
COLUMNS = {
    "reconstruction": (("l1", "ms_ssim", "psnr", "fid", "akd"),
                       ("lpips", "fvd", "ard", "auh", "csim")),
    "cross_identity": (("csim", "ard", "auh", "fvd"), ("fid",)),
    "editing": (("are", "fid", "auh"), ("csim",)),
}
TABLE_NAMES = {
    "reconstruction": "Table 1: same-identity reconstruction",
    "cross_identity": "Table 2: cross-identity reenactment",
    "editing": "Table 3: pose and expression editing",
}
ABLATION_COLUMNS = (("reconstruction", "l1"), ("reconstruction", "fid"),
                    ("cross_identity", "csim"), ("cross_identity", "ard"),
                    ("cross_identity", "fvd"))
DIGITS = {"l1": 4, "ms_ssim": 3, "csim": 3, "auh": 3, "lpips": 4, "akd": 3}


def json_safe(x: Any) -> Any:
    """NaN -> null, +-inf -> "inf"/"-inf" (strict JSON has neither), numpy -> Python."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        if math.isnan(x):
            return None
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, np.integer):
        return int(x)
    return x


def fmt(entry: dict | None, name: str) -> str:
    """One table cell: the value with the metric's digits, and faces not found."""
    if entry is None:
        return "–"
    v = entry["value"]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        text = "n/a"
    elif isinstance(v, str):
        text = v
    else:
        text = f"{v:.{DIGITS.get(name, 2)}f}"
    if entry.get("missing"):
        text += f" ({entry['missing']}/{entry['frames']} no face)"
    return text


def columns(protocol: str, measured: list[str]) -> tuple[list[str], list[str]]:
    """The paper's and our columns of `protocol` that were measured, in table order."""
    paper, ours = COLUMNS[protocol]
    return [m for m in paper if m in measured], [m for m in ours if m in measured]


def protocol_table(name: str, part: dict) -> list[str]:
    """Markdown lines of one protocol's table, its notes and skips."""
    paper, ours = columns(name, part["metrics"])
    header = [TITLES[m] for m in paper] + (["‖"] if ours else []) + [TITLES[m] for m in ours]
    lines = [f"## {TABLE_NAMES[name]}", "", part["protocol"] + ".",
             f"{part['clips']} case(s), {part['frames']} measured frames.", ""]
    if not header:
        return lines + ["No metric of this table was measured.", ""]
    lines += ["| method | " + " | ".join(header) + " |",
              "|---|" + "---:|" * len(header)]
    for method, row in part["rows"].items():
        cells = [fmt(row.get(m), m) for m in paper] + (["‖"] if ours else [])
        cells += [fmt(row.get(m), m) for m in ours]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    notes = []
    for method, row in part["rows"].items():
        psnr = row.get("psnr")
        if psnr and psnr.get("identical_pairs"):
            notes.append(f"{method}: {psnr['identical_pairs']} identical pairs make PSNR inf; "
                         f"without them {psnr['value_without_identical']}")
    if part.get("skipped"):
        lines += ["", "Skipped:"] + [f"- {m}: {r}" for m, r in part["skipped"].items()]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return lines + [""]


def provenance_lines(provenance: dict) -> list[str]:
    lines = []
    for m, p in provenance.items():
        sha = {k: p.get(k.replace("weights", "sha256"), "")[:12] for k in p}
        files = [f"`{pathlib.Path(v).name}` (sha256 {sha[k]})"
                 for k, v in p.items() if k.startswith("weights")]
        lines.append(f"- {m}: {p.get('network', '?')}; {', '.join(files)}")
    return lines


def markdown_report(result: dict) -> str:
    """The Markdown report of an `evaluate_workdir` result: one table per protocol."""
    what = (f"`{result['workdir']}` (step {result['step']})" if result.get("workdir")
            else result.get("method", "a model"))
    lines = [
        f"# Evaluation of {what}", "",
        f"Split `{result['split']}` of `{result['data']}` at "
        f"{result['resolution']}x{result['resolution']}.", "",
    ]
    for name, part in result["protocols"].items():
        lines += protocol_table(name, part)
    if result.get("skipped"):
        lines += ["Skipped everywhere:"]
        lines += [f"- {m}: {r}" for m, r in result["skipped"].items()] + [""]
    if result["provenance"]:
        lines += ["Networks:"] + provenance_lines(result["provenance"])
    return "\n".join(lines) + "\n"


def ablation_table(results: dict[str, dict]) -> str:
    """Table 4 from `{row label: evaluate_workdir result}` (reconstruction and cross-identity
    evaluated): L1, FID, CSIM, ARD, FVD per variant, the model row of each run."""
    title = " | ".join(TITLES[m] for _, m in ABLATION_COLUMNS)
    lines = ["## Table 4: ablation", "",
             "L1 and FID from same-identity reconstruction; CSIM, ARD and FVD from "
             "cross-identity reenactment (the same pairing for every run).", "",
             f"| setting | {title} |", "|---|" + "---:|" * len(ABLATION_COLUMNS)]
    for label, result in results.items():
        cells = []
        for protocol, metric in ABLATION_COLUMNS:
            part = result["protocols"].get(protocol)
            row = next(iter(part["rows"].values())) if part else {}
            cells.append(fmt(row.get(metric), metric))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
