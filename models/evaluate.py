"""Evaluate a saved report model on held-out phantom studies or on a dataset folder.

    python -m models.evaluate --model models/weights/demo --phantoms 100 --seed 1 [--json]
    python -m models.evaluate --model DIR --data DATASET_DIR [--json]

Prints BLEU-1..4, METEOR, ROUGE-L (`models.training.metrics`), clinical efficacy (findings
named in the generated text by the negation-aware labeller against the truth: truth.json
for phantoms, else dataset.jsonl labels, else the labeller on the reference report) and the
findings head's macro AUC. On phantoms it also prints how often the narrative puts a finding
it rightly names at its planted site (lobe, side, liver lobe, node station, rectal wall:
`site_agreement`; the site head's calls, which the SR codes as Finding Site:
`site_head_agreement`), since a report that finds the nodule in the wrong lobe sends the
reader to the wrong place, and, per focal finding, the recall an ideal observer could reach
(`models.phantom.detectability`: how many planted findings are above the Rose criterion in
their best view), so that a model's misses can be told from findings nobody could see.
`--json` prints exactly one JSON object. Phantoms are written to
a temporary folder with study seeds `seed * 100000 + index`; use a seed other than the
training data's (training.json records it; a clash is refused). `--device` (auto, cpu,
cuda, cuda:N) is where the model generates; on CUDA it runs in the precision the node's
worker uses there (`Placement`'s "auto"), so GPU figures can differ slightly from CPU ones.
Every option has an environment mirror, MSVLM_EVAL_<OPTION>.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.msvlm import ReportGenerator
from models.phantom.detectability import focal_signals
from models.phantom.findings import site_of, site_vocabulary
from models.training.data import (
    DatasetError,
    IndexEntry,
    add_phantom_arguments,
    load_study_views,
    make_phantoms,
    phantom_spec,
    read_index,
)
from models.training.device import DEVICE_CHOICES, resolve_device
from models.training.labeller import PATTERNS, extract_findings, stated_site
from models.training.metrics import clinical_efficacy, corpus_bleu, macro_auc, meteor, rouge_l


def truth_labels(entry: IndexEntry) -> dict[str, int]:
    """truth.json's labels when the study has one, else the index's, else the labeller's."""
    truth_file = entry.folder / "truth.json"
    if truth_file.is_file():
        return {k: int(v) for k, v in json.loads(truth_file.read_text())["labels"].items()}
    if entry.labels:
        return dict(entry.labels)
    return extract_findings(entry.report)


def truth_sites(entry: IndexEntry) -> dict[str, str]:
    """Where each planted finding is, from truth.json (finding key -> site); {} without one."""
    truth_file = entry.folder / "truth.json"
    if not truth_file.is_file():
        return {}
    findings = json.loads(truth_file.read_text())["findings"]
    sites = {f["key"]: site_of(f["key"], f["attributes"]) for f in findings if f["present"]}
    return {key: site for key, site in sites.items() if site is not None}


def narrative_sites(
    sites: Sequence[Mapping[str, str]], hypotheses: Sequence[str]
) -> list[dict[str, str | None]]:
    """Per study, the site the narrative gives each planted finding it names (None: named
    without a site); planted findings it does not name are left out."""
    return [
        {
            key: stated_site(text, key, site_vocabulary(key))
            for key in truth
            if key in PATTERNS and extract_findings(text, [key])[key]
        }
        for truth, text in zip(sites, hypotheses, strict=True)
    ]


#: operating points `head_f1_by_threshold` tries
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def head_f1_by_threshold(
    truths: Sequence[Mapping[str, int]], probabilities: Sequence[Mapping[str, float]]
) -> dict[str, float]:
    """The findings head's micro F1 at each of `THRESHOLDS` (keys as text, for JSON).

    Why: the SR's coded findings and the narrative follow the call at the model's
    `findings_threshold`; choose it where this peaks on *validation* phantoms (a seed of its
    own), never on the held-out set the model is then reported on.
    """
    out = {}
    for threshold in THRESHOLDS:
        predicted = [
            {k: int(p[k] >= threshold) for k in t} for t, p in zip(truths, probabilities, strict=True)
        ]
        out[f"{threshold:.2f}"] = clinical_efficacy(truths, predicted).f1
    return out


def site_agreement(
    sites: Sequence[Mapping[str, str]], stated: Sequence[Mapping[str, str | None]]
) -> tuple[float | None, dict[str, dict[str, float]]]:
    """Of the planted findings named (by the narrative: `narrative_sites`; by the site head: the
    findings it called present), the share named at their planted site.

    Overall and per finding ({"named": n, "right_site": k, "agreement": k / n}); a finding
    named without a site counts as wrong. None when no planted finding with a site is named.
    """
    per: dict[str, list[int]] = {}
    for truth, named_sites in zip(sites, stated, strict=True):
        for key, site in truth.items():
            if key in named_sites:
                per.setdefault(key, []).append(int(named_sites[key] == site))
    named = sum(len(v) for v in per.values())
    overall = sum(sum(v) for v in per.values()) / named if named else None
    return overall, {
        key: {"named": len(v), "right_site": sum(v), "agreement": sum(v) / len(v)}
        for key, v in sorted(per.items())
    }


def training_phantom_seed(model_dir: Path) -> int | None:
    path = model_dir / "training.json"
    if not path.is_file():
        return None
    seed = json.loads(path.read_text()).get("data", {}).get("phantom_seed")
    return None if seed is None else int(seed)


def evaluate_entries(
    generator: ReportGenerator,
    entries: Sequence[IndexEntry],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 192,
    num_beams: int = 1,
    with_meteor: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the model on every study and compute all metrics (a JSON-able dict)."""
    start = time.perf_counter()
    hypotheses: list[str] = []
    probabilities: list[dict[str, float]] = []
    calls: list[dict[str, bool]] = []
    head_sites: list[dict[str, str | None]] = []
    truths = [truth_labels(e) for e in entries]
    for first in range(0, len(entries), batch_size):
        chunk = entries[first : first + batch_size]
        studies = [load_study_views(e.folder) for e in chunk]
        for output in generator.generate_reports(studies, max_new_tokens=max_new_tokens, num_beams=num_beams):
            hypotheses.append(output.text)
            probabilities.append(output.findings)
            calls.append(output.present)
            head_sites.append({key: site for key, (site, _) in output.sites.items()})
        if progress:
            print(
                f"  {len(hypotheses)}/{len(entries)} studies ({time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    references = [[e.report] for e in entries]
    known = set(PATTERNS)
    predicted = [
        extract_findings(h, [k for k in t if k in known]) for h, t in zip(hypotheses, truths, strict=True)
    ]
    bleu = corpus_bleu(hypotheses, references)
    ce = clinical_efficacy(truths, predicted)
    head_truth = [{k: v for k, v in t.items() if k in p} for t, p in zip(truths, probabilities, strict=True)]
    auc, auc_per_label = macro_auc(head_truth, probabilities)
    head_predicted = [{k: int(c[k]) for k in t} for t, c in zip(head_truth, calls, strict=True)]
    head_ce = clinical_efficacy(head_truth, head_predicted)
    by_threshold = head_f1_by_threshold(head_truth, probabilities)
    agreement = narrative_agreement(head_predicted, predicted)
    planted_sites = [truth_sites(e) for e in entries]
    sites, sites_per_label = site_agreement(planted_sites, narrative_sites(planted_sites, hypotheses))
    head_site, head_site_per_label = site_agreement(planted_sites, head_sites)
    return {
        "n": len(entries),
        "bleu1": bleu[0],
        "bleu2": bleu[1],
        "bleu3": bleu[2],
        "bleu4": bleu[3],
        "meteor": meteor(hypotheses, references) if with_meteor else None,
        "rouge_l": rouge_l(hypotheses, references),
        "ce_precision": ce.precision,
        "ce_recall": ce.recall,
        "ce_f1": ce.f1,
        "ce_macro_f1": ce.macro_f1,
        "ce_per_label": ce.per_label,
        "findings_auc": auc,
        "findings_auc_per_label": auc_per_label,
        "findings_head_f1": head_ce.f1,
        "findings_head_f1_by_threshold": by_threshold,
        "best_threshold": max(by_threshold, key=lambda t: (by_threshold[t], -abs(float(t) - 0.5))),
        "narrative_agreement": agreement,
        "site_agreement": sites,
        "site_agreement_per_label": sites_per_label,
        "site_head_agreement": head_site if any(head_sites) else None,
        "site_head_agreement_per_label": head_site_per_label,
        "seconds": time.perf_counter() - start,
        "examples": [
            {"reference": e.report, "generated": h} for e, h in zip(entries[:2], hypotheses[:2], strict=False)
        ],
    }


def narrative_agreement(
    coded: Sequence[Mapping[str, int]], narrative: Sequence[Mapping[str, int]]
) -> float | None:
    """The share of (study, finding) pairs where the narrative says what the coded finding says.

    Why: the SR carries both, and a radiologist who reads "no nodule" above a coded nodule
    trusts neither; None when no pair is stated by both.
    """
    pairs = [(c[k], n[k]) for c, n in zip(coded, narrative, strict=True) for k in c if k in n]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None


def recall_ceiling(
    n: int, *, seed: int, matrix: int, slices: int, position_jitter_mm: float = 0.0
) -> dict[str, dict[str, float]]:
    """Per focal finding of `make_phantoms(n, seed)`: how many are planted, how many an ideal
    observer could detect (`models.phantom.detectability`), and so the highest recall any
    model can reach at high specificity."""
    specs = (
        phantom_spec(i, seed=seed, matrix=matrix, slices=slices, position_jitter_mm=position_jitter_mm)
        for i in range(n)
    )
    signals = [s for spec in specs for s in focal_signals(spec)]
    out = {}
    for key in sorted({s.key for s in signals}):
        mine = sorted((s for s in signals if s.key == key), key=lambda s: s.snr)
        detectable = sum(s.detectable for s in mine)
        out[key] = {
            "positives": len(mine),
            "detectable": detectable,
            "recall_ceiling": detectable / len(mine),
            "median_snr": mine[len(mine) // 2].snr,
        }
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_table(model: str, result: dict[str, Any]) -> None:
    print(f"model {model}: {result['n']} studies in {result['seconds']:.1f} s")
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l"):
        print(f"  {key:<14}{_fmt(result[key])}")
    print(f"  CE precision  {_fmt(result['ce_precision'])}\n  CE recall     {_fmt(result['ce_recall'])}")
    print(f"  CE F1 (micro) {_fmt(result['ce_f1'])}\n  CE F1 (macro) {_fmt(result['ce_macro_f1'])}")
    print(
        f"  findings AUC  {_fmt(result['findings_auc'])}  "
        f"(head F1 at the model's threshold: {_fmt(result['findings_head_f1'])}; "
        f"best {_fmt(result['findings_head_f1_by_threshold'][result['best_threshold']])} "
        f"at {result['best_threshold']})"
    )
    print(f"  narrative agrees with the coded findings: {_fmt(result['narrative_agreement'])}")
    print(f"  named planted findings put at their planted site: {_fmt(result['site_agreement'])}")
    for key, values in result["site_agreement_per_label"].items():
        print(f"    {key:<18} {int(values['right_site'])} of {int(values['named'])}")
    if result["site_head_agreement"] is not None:
        print(
            "  the site head's call for planted findings it calls present: "
            f"{_fmt(result['site_head_agreement'])}"
        )
        for key, values in result["site_head_agreement_per_label"].items():
            print(f"    {key:<18} {int(values['right_site'])} of {int(values['named'])}")
    ceiling = result.get("recall_ceiling") or {}
    for key, values in result["ce_per_label"].items():
        auc = result["findings_auc_per_label"].get(key)
        limit = f"  (ideal observer: R {ceiling[key]['recall_ceiling']:.3f})" if key in ceiling else ""
        print(
            f"    {key:<18} F1 {values['f1']:.3f}  P {values['precision']:.3f}  R {values['recall']:.3f}  "
            f"positives {int(values['positives'])}  AUC {_fmt(auc)}{limit}"
        )
    for example in result["examples"]:
        print("  reference:", " ".join(example["reference"].split()))
        print("  generated:", example["generated"])


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"MSVLM_EVAL_{name}", default)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=_env("MODEL"), required=_env("MODEL") is None)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--phantoms", type=int, default=int(_env("PHANTOMS", "0") or 0), metavar="N")
    source.add_argument("--data", type=Path, default=_env("DATA"))
    parser.add_argument(
        "--seed", type=int, default=int(_env("SEED", "1") or 1), help="phantom seed (held out)"
    )
    add_phantom_arguments(parser, _env)
    parser.add_argument("--batch-size", type=int, default=int(_env("BATCH_SIZE", "8") or 8))
    parser.add_argument("--max-new-tokens", type=int, default=int(_env("MAX_NEW_TOKENS", "192") or 192))
    parser.add_argument("--num-beams", type=int, default=int(_env("NUM_BEAMS", "1") or 1))
    parser.add_argument(
        "--no-meteor",
        action="store_true",
        default=_env("NO_METEOR", "") in ("1", "true"),
        help="skip METEOR (it starts a JVM)",
    )
    parser.add_argument("--json", action="store_true", default=_env("JSON", "") in ("1", "true"))
    parser.add_argument(
        "--device",
        default=_env("DEVICE", "auto"),
        help=f"{DEVICE_CHOICES} (default auto: CUDA when available, else CPU)",
    )
    args = parser.parse_args(argv)
    try:
        if (args.phantoms > 0) == (args.data is not None):
            raise DatasetError("give either --phantoms N (with --seed) or --data DIR")
        if args.phantoms and training_phantom_seed(args.model) == args.seed:
            raise DatasetError(f"--seed {args.seed} is the seed the model was trained on; pick another")
        generator = ReportGenerator.from_pretrained(args.model, device=resolve_device(args.device))
        with contextlib.ExitStack() as stack:
            if args.phantoms:
                data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="msvlm-eval-")))
                make_phantoms(
                    data,
                    args.phantoms,
                    seed=args.seed,
                    matrix=args.matrix,
                    slices=args.slices,
                    position_jitter_mm=args.position_jitter,
                )
            else:
                data = args.data
            result = evaluate_entries(
                generator,
                read_index(data),
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                num_beams=args.num_beams,
                with_meteor=not args.no_meteor,
                progress=not args.json,
            )
            if args.phantoms:
                result["recall_ceiling"] = recall_ceiling(
                    args.phantoms,
                    seed=args.seed,
                    matrix=args.matrix,
                    slices=args.slices,
                    position_jitter_mm=args.position_jitter,
                )
    except (DatasetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"model": str(args.model), **result}))
    else:
        print_table(str(args.model), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
