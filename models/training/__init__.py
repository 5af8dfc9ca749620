"""Training and evaluation of MS-VLM and the 3D-patch baseline (`python -m models.train`,
`python -m models.evaluate`).

* `data`: phantom dataset writing, loading studies through the node's grouping and volume
  loader, preprocessed-tensor caches and batching.
* `dino`: stage 0, DINO self-distillation of the slice encoder.
* `stages`: stages 1-3 (masked embedding modelling, bridge alignment, report tuning) and
  the baseline's schedule.
* `labeller`: rule-based, negation-aware finding extraction from report text.
* `metrics`: BLEU, METEOR, ROUGE-L, clinical efficacy and AUC.
"""
