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
from models.phantom import FINDINGS


def save_tiny_model(directory: Path, *, version: str = "tiny-test") -> Path:
    settings = ProcessorSettings.from_model_config(msvlm_preset("tiny"))
    probe = MsVlmProcessor(tokenizer=build_word_tokenizer(["x"]), settings=settings)
    corpus = [*probe.prompt_corpus(), "findings : no acute abnormality . impression : normal study ."]
    tokenizer = build_word_tokenizer(corpus)
    config = msvlm_preset("tiny", vocab_size=len(tokenizer))
    config.model_name = "msvlm-tiny-test"
    config.model_version = version
    torch.manual_seed(0)
    model = MsVlmForReportGeneration(config).eval()
    processor = MsVlmProcessor.from_model_config(config, tokenizer)
    ReportGenerator(model=model, processor=processor, placement=Placement.for_device("cpu")).save_pretrained(
        directory
    )
    (directory / "findings.json").write_text(
        json.dumps(
            [
                {
                    "key": f.key,
                    "display": f.display,
                    "code_value": f.code.value,
                    "coding_scheme": f.code.scheme,
                    "code_meaning": f.code.meaning,
                }
                for f in FINDINGS
            ]
        )
    )
    return directory
