"""A tiny random MS-VLM saved as a Hugging Face folder, for pipeline tests.

Worker mechanics (claiming, leases, SR, delivery) do not depend on what the
model says, so they run on this in seconds; tests that check the report's
content use the bundled demo weights instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.msvlm import (
    MsVlmForReportGeneration,
    MsVlmProcessor,
    ProcessorSettings,
    build_word_tokenizer,
    msvlm_preset,
)
from models.msvlm.pipeline import Placement, ReportGenerator
from models.train import FINDINGS_FILE, finding_modalities, finding_vocabulary


def save_tiny_model(directory: Path, *, version: str = "tiny-test") -> Path:
    settings = ProcessorSettings.from_model_config(msvlm_preset("tiny"))
    probe = MsVlmProcessor(tokenizer=build_word_tokenizer(["x"]), settings=settings)
    corpus = [*probe.prompt_corpus(), "findings : no acute abnormality . impression : normal study ."]
    tokenizer = build_word_tokenizer(corpus)
    config = msvlm_preset("tiny", vocab_size=len(tokenizer))
    config.model_name = "msvlm-tiny-test"
    config.model_version = version
    config.finding_modalities = finding_modalities()
    # a site head, as the demo model has; its nodule always called present, so that every run
    # has a finding whose site the SR must code
    config.findings_pooling = "per_finding"
    config.finding_sites = {
        e["key"]: [site["name"] for site in e["sites"]] for e in finding_vocabulary() if "sites" in e
    }
    # and a token head reading the nodule's side, as the demo model has (its side is random here)
    config.token_side_findings = ["lung_nodule"]
    torch.manual_seed(0)
    model = MsVlmForReportGeneration(config).eval()
    with torch.no_grad():
        model.findings_head.classifier.bias[(config.finding_labels or []).index("lung_nodule")] = 10.0
    processor = MsVlmProcessor.from_model_config(config, tokenizer)
    ReportGenerator(model=model, processor=processor, placement=Placement.for_device("cpu")).save_pretrained(
        directory
    )
    (directory / FINDINGS_FILE).write_text(json.dumps(finding_vocabulary()))
    return directory
