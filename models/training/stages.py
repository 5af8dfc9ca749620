"""Training stages after DINO, for MS-VLM and (same data and budget) the 3D-patch baseline.

MS-VLM (slice features cached once after stage 0, or after stage 0b when the schedule has
it; the slice encoder stays frozen after that):
  0b. slice findings: the slice encoder learns to show the findings in its slice embedding
      from per-slice targets, and where in the slice a located one lies (see `slice_findings`);
  1. masked embedding modelling: 30% of the slice embeddings of a study are replaced by the
     Z-former's learned mask embedding and regressed (L1) from the Z-former output;
  2. bridge alignment: report generation loss with the language model (and Z-former) frozen;
  3a. findings (when the schedule has it): Z-former and findings head on the study labels alone;
  3. report tuning: bridge, LM (fully, or LoRA for large LMs) and any finding tokens, and the
     Z-former and findings head unless stage 3a trained them.
No pretrained LM can be downloaded, so before stage 2 the LM is warmed up on the report
texts alone ("stage 2a"), which is what makes a frozen LM meaningful in stage 2.

Baseline: no slice encoder, so no stage 0, 0b or 1. It gets the same LM warm-up. With a
findings stage in its schedule (`schedule_for(preset, baseline=True)`), the analogue of
MS-VLM's recipe: the volume encoder and the findings head learn the study labels from the
pixels (the baseline's stages 0b and 3a in one), its output is cached, and stages 2 and 3
train the bridge, the finding tokens and the LM on the cache, as MS-VLM's do on the
Z-former's input. Without one (the full preset), stage 2 trains volume encoder + bridge
with the LM frozen (a frozen random encoder could not be aligned), then stage 3 as MS-VLM.

Every stage runs on the device its model is on (`device.module_device`): batches are
moved there, random masks drawn there, caches kept there, and each step's forward pass
runs under `device.training_autocast` while its loss and the optimiser stay float32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from models.msvlm.bridge import attention_loss, findings_loss, site_loss
from models.msvlm.lora import LoraSettings, add_lora, merge_lora
from models.msvlm.modeling_msvlm import MsVlmForReportGeneration
from models.msvlm.processing_msvlm import MsVlmProcessor
from models.msvlm.report_model import ReportModelBase, VisualEncoding
from models.msvlm.zformer import pack_views

from .data import StudyRecord, batches, pad_views, site_labels, text_batch, token_slice_targets, view_ids
from .device import module_device, training_autocast
from .dino import DinoSettings


@dataclass(frozen=True)
class StageSettings:
    epochs: int
    lr: float
    batch_size: int = 8
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    #: stage 3: learning rate of everything but the language model, as a multiple of `lr`
    encoder_lr_scale: float = 1.0


@dataclass(frozen=True)
class Schedule:
    """Every stage's budget; `presets.schedule_for(name)` gives the one per model size."""

    dino: DinoSettings
    mem: StageSettings
    lm_warmup: StageSettings
    align: StageSettings
    tune: StageSettings
    mask_ratio: float = 0.3
    lora: LoraSettings | None = None
    #: stage 0b (after DINO): epochs are passes over the slices that show a finding,
    #: `batch_size` of them and as many other slices per step (None: no stage 0b)
    slice_findings: StageSettings | None = None
    #: stage 3a: the Z-former and the findings head learn the findings alone, and stage 3
    #: then leaves them as they are (None: no stage 3a; stage 3 trains them with the LM)
    findings: StageSettings | None = None
    #: stage 3a: weight of `bridge.attention_loss`, which puts each finding's pooling weight on
    #: the slices the answer keys say show it (0: not supervised). Why: a site head reads the
    #: finding's pooled vector, which tells where the finding is only if it comes from those
    #: slices (0.31 of the weight for the nodule without it, 0.58-0.64 with it; README "Sites")
    attention_supervision: float = 0.0
    #: stage 0b: weight of the place loss (`slice_place_loss`), the slice encoder also saying
    #: where in the slice a located finding lies (0: presence only). Why: a finding's site
    #: (lobe, side, node station) needs its place within the slice, and a linear probe on
    #: version 1's slice features put a nodule no closer than guessing the mean (README "Sites")
    slice_place_weight: float = 0.0
    #: stage 0b: weight of `slice_token_loss`, a head on each patch token saying which token
    #: shows a located finding (0: none). Why: see `slice_token_loss`
    slice_token_weight: float = 0.0
    #: stage 3 also tunes the top N layers (and final norm) of the slice encoder; the hidden
    #: states entering them are cached once, so this costs N/L of a full encoder pass
    tune_vision_layers: int = 0


@dataclass
class StageLog:
    """Per-stage record printed at the end and saved to training.json."""

    name: str
    seconds: float = 0.0
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    epoch_losses: list[float] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.name}: loss {self.first_loss:.4f} -> {self.last_loss:.4f} in {self.seconds:.1f} s"


#: the baseline's findings stage at the demo size: 4 passes over 900 studies from the pixels
#: took 17.2 min on 2 AMD EPYC cores, its whole recipe 35.9 min against MS-VLM's 37.8
BASELINE_DEMO_FINDINGS = StageSettings(epochs=4, lr=1e-3, batch_size=8, weight_decay=0.05)


def schedule_for(preset: str, *, baseline: bool = False) -> Schedule:
    """Budgets: "tiny" for tests (seconds), "demo" for about 30 min on 2 CPU cores (27 for
    version 7), "full" for GPUs.

    The baseline shares every stage's settings except, at the demo size, its findings
    stage: learning from pixels costs it what MS-VLM's cached features do not, and the
    comparison is at the same wall-clock budget.
    """
    schedule = _msvlm_schedule(preset)
    if baseline and preset == "demo":
        return replace(schedule, findings=BASELINE_DEMO_FINDINGS)
    return schedule


def _msvlm_schedule(preset: str) -> Schedule:
    if preset == "tiny":
        return Schedule(
            dino=DinoSettings(
                steps=6,
                batch_size=8,
                warmup_steps=2,
                out_dim=64,
                hidden_dim=32,
                bottleneck_dim=16,
                local_size=16,
                log_every=0,
            ),
            mem=StageSettings(epochs=3, lr=1e-3, batch_size=2),
            lm_warmup=StageSettings(epochs=3, lr=3e-3, batch_size=2),
            align=StageSettings(epochs=3, lr=2e-3, batch_size=2),
            tune=StageSettings(epochs=4, lr=2e-3, batch_size=2),
            slice_findings=StageSettings(epochs=1, lr=1e-3, batch_size=4),
            findings=StageSettings(epochs=2, lr=1e-3, batch_size=2),
            attention_supervision=1.0,
            slice_place_weight=1.0,
            slice_token_weight=1.0,
            tune_vision_layers=1,
        )
    if preset == "demo":
        # for 2,700 phantom studies (version 7): a third of version 6's passes over three times
        # its 900 studies, about the same steps; the new studies, not more passes, lifted its
        # held-out CE F1 from 0.873 to 0.902 (another run: 0.893) and AUC from 0.927 to 0.943
        # (README "More studies")
        return Schedule(
            dino=DinoSettings(steps=150, batch_size=32, warmup_steps=15, log_every=25),
            mem=StageSettings(epochs=2, lr=5e-4, batch_size=8),
            lm_warmup=StageSettings(epochs=2, lr=1e-3, batch_size=16),
            align=StageSettings(epochs=2, lr=1e-3, batch_size=8),
            tune=StageSettings(epochs=4, lr=5e-4, batch_size=8, encoder_lr_scale=4.0),
            # one pass over 2,700 studies is 1.5 times the steps of the two over 900 that
            # version 6 needed (with one over 900, the slice head's maximum over a held-out
            # study's slices scored AUC 0.67 for the nodule and 0.62 for lymph nodes, not 0.86/0.85)
            slice_findings=StageSettings(epochs=1, lr=1e-3, batch_size=32),
            # slice_place_weight stays 0: its trials, alone and beside the token loss, were mixed
            # (README "Sites", "Which patch token shows it")
            slice_token_weight=1.0,
            findings=StageSettings(epochs=9, lr=1e-3, batch_size=16, weight_decay=0.05),
            attention_supervision=1.0,
        )
    if preset == "full":
        return Schedule(
            dino=DinoSettings(
                steps=50_000,
                batch_size=256,
                warmup_steps=2_000,
                out_dim=65_536,
                hidden_dim=2048,
                bottleneck_dim=256,
                local_crops=6,
                local_size=96,
            ),
            mem=StageSettings(epochs=50, lr=1e-4, batch_size=8),
            lm_warmup=StageSettings(epochs=0, lr=1e-5, batch_size=8),
            align=StageSettings(epochs=5, lr=1e-4, batch_size=8),
            tune=StageSettings(epochs=10, lr=5e-5, batch_size=8),
            lora=LoraSettings(),
        )
    raise ValueError(f"unknown preset {preset!r}")


# --- the generic loop ----------------------------------------------------------------------


def run_stage(
    name: str,
    parameters: Sequence[nn.Parameter],
    settings: StageSettings,
    n_items: int,
    step: Callable[[list[int]], torch.Tensor],
    *,
    seed: int,
    scaled: Sequence[nn.Parameter] = (),
) -> StageLog:
    """AdamW with linear warm-up and cosine decay over `settings.epochs` passes of `n_items`.

    `scaled` parameters (a subset of `parameters`) learn at `settings.encoder_lr_scale` x lr.
    `step` runs under the training autocast of the device the parameters are on; its loss
    is taken back to float32.
    """
    log = StageLog(name=name)
    if settings.epochs <= 0 or n_items == 0:
        print(f"{name}: skipped", flush=True)
        return log
    params = [p for p in parameters if p.requires_grad]
    device = params[0].device
    scaled_ids = {id(p) for p in scaled}
    groups = [
        {"params": [p for p in params if id(p) not in scaled_ids], "lr": settings.lr},
        {"params": [p for p in params if id(p) in scaled_ids], "lr": settings.lr * settings.encoder_lr_scale},
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=settings.lr, weight_decay=settings.weight_decay
    )
    steps_per_epoch = math.ceil(n_items / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    warmup = max(1, int(total * settings.warmup_fraction))

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        running, count = 0.0, 0
        for index in batches(n_items, settings.batch_size, seed=seed, epoch=epoch):
            with training_autocast(device):
                loss = step(index)
            loss = loss.float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(index)
            count += len(index)
        mean = running / max(1, count)
        log.epoch_losses.append(mean)
        print(
            f"  {name} epoch {epoch + 1}/{settings.epochs} loss {mean:.4f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    log.seconds = time.perf_counter() - start
    log.first_loss, log.last_loss = log.epoch_losses[0], log.epoch_losses[-1]
    return log


def _only_train(model: nn.Module, *modules: nn.Module) -> list[nn.Parameter]:
    model.requires_grad_(False)
    for module in modules:
        module.requires_grad_(True)
    return [p for module in modules for p in module.parameters()]


def _language_model_parameters(model: ReportModelBase, *, lora: bool) -> list[nn.Parameter]:
    """Make the LM trainable (all of it, or only its LoRA adapters) and return those parameters."""
    if not lora:
        model.language_model.requires_grad_(True)
        return list(model.language_model.parameters())
    adapters = [p for n, p in model.language_model.named_parameters() if "lora_" in n]
    for p in adapters:
        p.requires_grad_(True)
    return adapters


#: a batch of studies (by index) to their encoder output
Encode = Callable[[list[int]], VisualEncoding]


def _report_step(
    model: ReportModelBase,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    encode: Encode,
    *,
    with_findings: bool,
) -> Callable[[list[int]], torch.Tensor]:
    """A report-loss step (and findings loss `with_findings`) on what `encode` gives."""
    device = module_device(model)

    sites = site_labels(model.config, studies) if with_findings else None

    def step(index: list[int]) -> torch.Tensor:
        text = text_batch(processor, [studies[i] for i in index]).to(device)
        out = model.forward_from_encoding(
            encode(index),
            input_ids=text.input_ids,
            attention_mask=text.attention_mask,
            labels=text.labels,
            findings_labels=text.findings_labels if with_findings else None,
            site_labels=sites[index].to(device) if sites is not None else None,
        )
        assert out.loss is not None
        return out.loss

    return step


# --- MS-VLM --------------------------------------------------------------------------------


#: stage 0b: weight of a slice that shows a finding against one that does not; half of each
#: batch shows one, so without it the (far more numerous) clear slices of the other half and
#: the other findings' columns would drown the few positives
POSITIVE_WEIGHT = 3.0


def slice_place_loss(predicted: torch.Tensor, truth: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
    """L1 between predicted and true places (fractions of the slice) where a slice shows a
    located finding; 0 (with a gradient) when none of the batch does.

    `predicted` and `places` are (B, L, 2), `truth` the slices' targets (B, L); a place is
    NaN for a finding nothing locates.
    """
    mask = (truth == 1) & places.isfinite().all(dim=-1)
    if not bool(mask.any()):
        return predicted.sum() * 0.0
    return F.l1_loss(predicted[mask], places[mask])


def slice_token_loss(token_logits: torch.Tensor, truth: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
    """Where a located finding lies, one patch token must score it and no distant one may.

    `token_logits` (B, T, L) are a head's scores of the (B, T) patch tokens of a square grid,
    `truth` the slices' targets (B, L), `places` (B, L, 2) where each located finding's centre
    lies (fractions of the slice, NaN where nothing locates it). Per slice and finding:
      * it shows a located finding: the best token within one token of its centre is
        pushed to 1 (weighted like a positive slice) and the best token more than one and a
        half tokens away to 0; a finding of a few pixels can straddle a token's border, so
        the nearest tokens compete and the ring between stays unknown;
      * it does not show the finding: its best token is pushed to 0.
    Why: a slice label alone lets the encoder learn a finding where the training studies
    happen to put it; this says which token shows it, on every slice, so the same detector
    must fire wherever it lies and nowhere else (README "Which patch token shows it").
    """
    grid = math.isqrt(token_logits.shape[1])
    if grid * grid != token_logits.shape[1]:
        raise ValueError(f"{token_logits.shape[1]} patch tokens do not make a square grid")
    axis = (torch.arange(grid, device=token_logits.device, dtype=torch.float32) + 0.5) / grid
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    centres = torch.stack([cols.flatten(), rows.flatten()], dim=-1)  # (T, 2) as (across, down)
    logits = token_logits.float().transpose(1, 2)  # (B, L, T)
    # Chebyshev distance in tokens from each finding's place to each token's centre
    distance = (places.float()[:, :, None, :] - centres).abs().amax(dim=-1) * grid
    total = logits.sum() * 0.0
    clear = truth == 0
    if bool(clear.any()):
        best = logits[clear].amax(dim=-1)
        total = total + F.binary_cross_entropy_with_logits(best, torch.zeros_like(best))
    shown = (truth == 1) & places.isfinite().all(dim=-1)
    if bool(shown.any()):
        scores, away = logits[shown], distance[shown]
        near = scores.masked_fill(away > 1.0, -1e4).amax(dim=-1)
        far = scores.masked_fill(away <= 1.5, -1e4).amax(dim=-1)
        total = total + POSITIVE_WEIGHT * F.binary_cross_entropy_with_logits(near, torch.ones_like(near))
        total = total + F.binary_cross_entropy_with_logits(far, torch.zeros_like(far))
    return total


def slice_pools(
    studies: Sequence[StudyRecord], num_labels: int
) -> tuple[list[list[tuple[int, int, int]]], list[tuple[int, int, int]]]:
    """(study, view, slice) of the slices with a known target: per finding those that show it,
    and all of them."""
    showing: list[list[tuple[int, int, int]]] = [[] for _ in range(num_labels)]
    known = []
    for i, study in enumerate(studies):
        for v, targets in enumerate(study.slice_targets):
            for k in (targets >= 0).any(dim=1).nonzero().flatten().tolist():
                known.append((i, v, k))
                for j in (targets[k] == 1).nonzero().flatten().tolist():
                    showing[j].append((i, v, k))
    return showing, known


def slice_findings(
    model: MsVlmForReportGeneration,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    settings: StageSettings,
    *,
    seed: int,
    place_weight: float = 0.0,
    token_weight: float = 0.0,
) -> StageLog:
    """Stage 0b: the slice encoder learns to show the findings in its slice embedding.

    A linear head scores slices against their targets (`StudyRecord.slice_targets`: from
    the answer keys' locations for focal findings, from the study labels otherwise). Each
    step takes `batch_size` slices that show a finding, the finding drawn in turn so that
    the few nodule slices count as much as the many of a diffuse finding, and as many
    slices drawn from all those with a known target. Why: the later stages read the slice
    embedding only, and that of a small ViT trained self-supervised on a few hundred
    studies carries neither a finding of a few pixels nor the size of the heart (linear
    probes at chance), while tuning it later through the Z-former and the report loss
    collapsed the Z-former's output. The head is discarded; the findings head is trained
    later (stage 3a or 3) on the Z-former's output. Skipped when no slice has a known target.

    With `place_weight`, a second linear head also says where in the slice each located
    finding lies (`StudyRecord.finding_places`, `slice_place_loss`), so that the slice
    embedding carries the place a site is read from, not only the presence.
    With `token_weight`, a head on the patch tokens learns which token shows each located
    finding (`slice_token_loss`); it is the model's `token_head` when the model keeps one.
    """
    name = "stage0b slice findings"
    names = processor.settings.finding_labels
    showing, known = slice_pools(studies, len(names))
    labels_shown = [j for j, pool in enumerate(showing) if pool]
    if not labels_shown:
        print(f"{name}: skipped (no slice has a known target)", flush=True)
        return StageLog(name=name)
    device = module_device(model)
    vit = model.vision_model
    hidden = model.config.vision.hidden_size
    head = nn.Linear(hidden, len(names)).to(device)
    place_head = nn.Linear(hidden, 2 * len(names)).to(device)
    # the model's own token head when it keeps one (to read sides: `laterality`), else a
    # throw-away one that only shapes the encoder
    token_head = model.token_head
    if token_head is None:
        token_head = nn.Linear(hidden, len(names)).to(device)
    located = all(len(s.finding_places) == len(s.pixels) for s in studies)
    use_places = place_weight > 0 and located
    use_tokens = token_weight > 0 and located
    # `_only_train` freezes the rest of the model, the model's own token head included
    params = [
        *_only_train(model, vit, *([token_head] if use_tokens else [])),
        *head.parameters(),
        *(place_head.parameters() if use_places else ()),
    ]
    generator = torch.Generator().manual_seed(seed + 5)
    turn = 0
    model.train()

    def step(index: list[int]) -> torch.Tensor:
        nonlocal turn
        picked = []
        for _ in index:
            pool = showing[labels_shown[turn % len(labels_shown)]]
            turn += 1
            picked.append(pool[int(torch.randint(len(pool), (1,), generator=generator))])
        picked += [known[j] for j in torch.randint(len(known), (len(index),), generator=generator).tolist()]
        pixels = torch.stack([studies[i].pixels[v][k] for i, v, k in picked]).to(device).float()
        truth = torch.stack([studies[i].slice_targets[v][k] for i, v, k in picked]).to(device)
        states = vit(pixel_values=pixels).last_hidden_state
        embedding = model.slice_embedding(states)
        logits = head(embedding).float()
        mask = truth >= 0
        weight = torch.where(truth == 1, POSITIVE_WEIGHT, 1.0)
        loss = F.binary_cross_entropy_with_logits(logits[mask], truth[mask], weight=weight[mask])
        if use_places or use_tokens:
            places = torch.stack([studies[i].finding_places[v] for i, v, _ in picked]).to(device)
        if use_places:
            predicted = place_head(embedding).float().view(len(picked), len(names), 2)
            loss = loss + place_weight * slice_place_loss(predicted, truth, places)
        if use_tokens:
            loss = loss + token_weight * slice_token_loss(token_head(states[:, 1:]), truth, places)
        return loss

    n_items = sum(len(pool) for pool in showing)
    log = run_stage(name, params, settings, n_items, step, seed=seed + 5)
    model.eval()
    return log


@torch.no_grad()
def cache_slice_features(
    model: MsVlmForReportGeneration, studies: Sequence[StudyRecord]
) -> list[list[torch.Tensor]]:
    """Encode every slice once with the (frozen) slice encoder: per study, per view (n, D).

    The features (float32) stay on the model's device: small, and read by every later step.
    """
    model.eval()
    device = module_device(model)
    with training_autocast(device):
        return [
            [model.encode_slices(view.to(device).float()).float() for view in study.pixels]
            for study in studies
        ]


def _feature_batch(
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    features: Sequence[list[torch.Tensor]],
    *,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    padded, mask = pad_views(features, device=device)
    return padded, mask, view_ids(processor, studies, device=device)


def stage1_mem(
    model: MsVlmForReportGeneration,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    features: Sequence[list[torch.Tensor]],
    settings: StageSettings,
    *,
    mask_ratio: float,
    seed: int,
) -> StageLog:
    """Masked embedding modelling of the Z-former on cached slice features (L1 on masked slots).

    First the Z-former's input standardisation is set from the cached features (see
    `ZFormer`); the regression target is the masked slice's standardised feature. Raw, a
    briefly self-supervised slice encoder's features differ little between slices
    (per-dimension spread ~1/30 of their mean) and predicting the dataset mean nearly
    solved the task; standardised, the mean scores an L1 of ~0.8 and only context helps.
    """
    device = module_device(model)
    model.zformer.set_input_statistics(*feature_statistics(features))
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    head = nn.Linear(model.config.zformer.hidden_size, model.config.vision.hidden_size).to(device)
    params = [*_only_train(model, model.zformer), *head.parameters()]
    model.train()

    def step(index: list[int]) -> torch.Tensor:
        chosen = [studies[i] for i in index]
        feats, mask, ids = _feature_batch(processor, chosen, [features[i] for i in index], device=device)
        packed = pack_views(feats, mask, ids)
        draw = torch.rand(packed.mask.shape, generator=generator, device=device)
        replace = (draw < mask_ratio) & packed.mask
        if not bool(replace.any()):
            replace = packed.mask & (packed.positions == 0)
        out = model.zformer(
            packed.features, packed.view_ids, packed.positions, packed.mask, replace_mask=replace
        )
        target = model.zformer.standardise(packed.features[replace])
        return F.l1_loss(head(out.last_hidden_state)[replace], target)

    log = run_stage("stage1 mem", params, settings, len(studies), step, seed=seed)
    model.eval()
    return log


def feature_statistics(features: Sequence[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of all cached slice features."""
    flat = torch.cat([view for study in features for view in study]).float()
    return flat.mean(dim=0), flat.std(dim=0)


def lm_warmup(
    model: ReportModelBase,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    settings: StageSettings,
    *,
    seed: int,
) -> StageLog:
    """Stage 2a: causal LM on prompt + report text alone (no pretrained LM is available)."""
    params = _only_train(model, model.language_model)
    device = module_device(model)
    model.train()

    def step(index: list[int]) -> torch.Tensor:
        batch = text_batch(processor, [studies[i] for i in index]).to(device)
        out = model.language_model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            labels=batch.labels,
            use_cache=False,
        )
        return out.loss

    log = run_stage("stage2a lm warm-up", params, settings, len(studies), step, seed=seed + 2)
    model.eval()
    return log


def _from_features(
    model: MsVlmForReportGeneration,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    features: Sequence[list[torch.Tensor]],
) -> Encode:
    """The Z-former over cached slice features (per study, per view)."""
    device = module_device(model)

    def encode(index: list[int]) -> VisualEncoding:
        feats, mask, ids = _feature_batch(
            processor, [studies[i] for i in index], [features[i] for i in index], device=device
        )
        return model.encode_study(slice_features=feats, slice_mask=mask, view_ids=ids)

    return encode


def _msvlm_step(
    model: MsVlmForReportGeneration,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    features: Sequence[list[torch.Tensor]],
    *,
    with_findings: bool,
) -> Callable[[list[int]], torch.Tensor]:
    encode = _from_features(model, processor, studies, features)
    return _report_step(model, processor, studies, encode, with_findings=with_findings)


def _findings_step(
    model: ReportModelBase,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    encode: Encode,
    *,
    attention_weight: float = 0.0,
) -> Callable[[list[int]], torch.Tensor]:
    """A step on the study labels alone (no report) on what `encode` gives: the findings loss,
    the site loss (`site_loss_weight`) with a site head, and `attention_weight` times
    `bridge.attention_loss`."""
    device = module_device(model)
    sites = site_labels(model.config, studies) if model.site_head is not None else None

    def step(index: list[int]) -> torch.Tensor:
        chosen = [studies[i] for i in index]
        labels = text_batch(processor, chosen, with_reports=False).findings_labels
        assert labels is not None
        labels = labels.to(device)
        encoding = encode(index)
        findings_logits, site_logits = model.heads(encoding)
        loss = findings_loss(findings_logits, labels)
        if site_logits is not None and sites is not None:
            loss = loss + model.config.site_loss_weight * site_loss(site_logits, sites[index].to(device))
        if attention_weight > 0:
            weights = model.findings_head.attention(encoding.tokens, encoding.mask)
            targets = token_slice_targets(chosen, weights.shape[1], weights.shape[2]).to(device)
            loss = loss + attention_weight * attention_loss(weights, targets, labels)
        return loss

    return step


def _heads(model: ReportModelBase) -> list[nn.Module]:
    """The findings head and, when the model has one, the site head."""
    return [model.findings_head] + ([model.site_head] if model.site_head is not None else [])


def _bridge_modules(model: ReportModelBase) -> list[nn.Module]:
    """What carries the encoder's output into the LM: the bridge and any finding tokens."""
    return [model.bridge] + ([model.findings_prompt] if model.findings_prompt is not None else [])


def stage3a_findings(
    model: MsVlmForReportGeneration,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    features: Sequence[list[torch.Tensor]],
    settings: StageSettings,
    *,
    seed: int,
    attention_weight: float = 0.0,
) -> StageLog:
    """Stage 3a: the Z-former and the findings (and site) heads learn the study labels alone.

    Why: trained beside the report loss (stage 3), the Z-former did not pass on what the
    slice features show (effusion: findings-head AUC 0.59, against 0.88 for the same
    Z-former and head trained on the findings alone, on the same features). The site head
    learns here too, and `attention_weight` supervises where each finding pools from.
    """
    params = _only_train(model, model.zformer, *_heads(model))
    model.train()
    step = _findings_step(
        model,
        processor,
        studies,
        _from_features(model, processor, studies, features),
        attention_weight=attention_weight,
    )
    log = run_stage("stage3a findings", params, settings, len(studies), step, seed=seed + 6)
    model.eval()
    return log


def stage2_align(
    model: MsVlmForReportGeneration,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    features: Sequence[list[torch.Tensor]],
    settings: StageSettings,
    *,
    seed: int,
) -> StageLog:
    """Bridge alignment: only the Perceiver bridge (and any finding tokens) learns, from the report loss."""
    params = _only_train(model, *_bridge_modules(model))
    model.train()
    step = _msvlm_step(model, processor, studies, features, with_findings=False)
    log = run_stage("stage2 bridge alignment", params, settings, len(studies), step, seed=seed + 3)
    model.eval()
    return log


@torch.no_grad()
def cache_vision_hidden(
    model: MsVlmForReportGeneration, studies: Sequence[StudyRecord], top_layers: int
) -> list[list[torch.Tensor]]:
    """Hidden states entering the top `top_layers` ViT layers: per study, per view (n, T, D) fp16."""
    vit = model.vision_model.eval()
    keep = len(vit.layers) - top_layers
    device = module_device(model)
    out = []
    for study in studies:
        views = []
        for view in study.pixels:
            chunks = []
            for chunk in view.to(device).float().split(model.config.slice_chunk_size):
                with training_autocast(device):
                    hidden = vit.embeddings(chunk)
                    for layer in vit.layers[:keep]:
                        hidden = layer(hidden)
                chunks.append(hidden.to(torch.float16))
            views.append(torch.cat(chunks))
        out.append(views)
    return out


def top_vision_features(
    model: MsVlmForReportGeneration, hidden: Sequence[torch.Tensor], top_layers: int
) -> list[torch.Tensor]:
    """Run the top ViT layers + final norm on cached hidden states; slice embeddings per view."""
    vit = model.vision_model
    states = torch.cat(list(hidden)).float()
    for layer in vit.layers[len(vit.layers) - top_layers :]:
        states = layer(states)
    embeddings = model.slice_embedding(vit.layernorm(states))
    return list(embeddings.split([h.shape[0] for h in hidden]))


def stage3_tune(
    model: MsVlmForReportGeneration,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    features: Sequence[list[torch.Tensor]],
    settings: StageSettings,
    *,
    lora: LoraSettings | None,
    tune_vision_layers: int = 0,
    findings_learned: bool = False,
    seed: int,
) -> StageLog:
    """Report tuning with the findings head: Z-former, bridge, findings head and the LM.

    After stage 3a (`findings_learned`) the Z-former and the findings head stay as that
    stage left them; the bridge, any finding tokens and the LM learn. The study labels are
    passed either way: they are what the finding tokens are fed in training.

    With `tune_vision_layers` > 0 the top layers of the slice encoder are tuned too: the
    frozen features of a small, briefly self-supervised ViT summarise a slice in its CLS
    token and lose small findings that its patch tokens still show.
    """
    device = module_device(model)
    if lora is not None:
        add_lora(model, lora)
        # the new adapters, wherever peft made them (the ignore: transformers' decorated `to`)
        model.to(device)  # type: ignore[arg-type]
    modules: list[nn.Module] = _bridge_modules(model)
    if not findings_learned:
        modules += [model.zformer, *_heads(model)]
    hidden: list[list[torch.Tensor]] = []
    if tune_vision_layers > 0:
        start = time.perf_counter()
        hidden = cache_vision_hidden(model, studies, tune_vision_layers)
        print(
            f"  cached slice-encoder states for its top {tune_vision_layers} layer(s) in "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
        vit = model.vision_model
        modules += [*vit.layers[len(vit.layers) - tune_vision_layers :], vit.layernorm]
    encoder_params = _only_train(model, *modules)
    params = encoder_params + _language_model_parameters(model, lora=lora is not None)
    model.train()
    if tune_vision_layers > 0:
        per_study: Sequence[list[torch.Tensor]] = _LazyFeatures(model, hidden, tune_vision_layers)
    else:
        per_study = features
    step = _msvlm_step(model, processor, studies, per_study, with_findings=True)
    log = run_stage(
        "stage3 report tuning",
        params,
        settings,
        len(studies),
        step,
        seed=seed + 4,
        scaled=encoder_params,
    )
    merge_lora(model)
    model.eval()
    return log


class _LazyFeatures(Sequence[list[torch.Tensor]]):
    """features[i] computed on access from cached hidden states, through the trainable top layers."""

    def __init__(
        self, model: MsVlmForReportGeneration, hidden: list[list[torch.Tensor]], top_layers: int
    ) -> None:
        self.model, self.hidden, self.top_layers = model, hidden, top_layers

    def __len__(self) -> int:
        return len(self.hidden)

    def __getitem__(self, index: int) -> list[torch.Tensor]:  # type: ignore[override]
        return top_vision_features(self.model, self.hidden[index], self.top_layers)


# --- the 3D-patch baseline -----------------------------------------------------------------


def _from_pixels(model: ReportModelBase, processor: MsVlmProcessor, studies: Sequence[StudyRecord]) -> Encode:
    """The volume encoder run on the studies' pixels (trainable)."""
    device = module_device(model)

    def encode(index: list[int]) -> VisualEncoding:
        chosen = [studies[i] for i in index]
        pixels, mask = pad_views([list(study.pixels) for study in chosen], device=device)
        return model.encode_study(
            pixel_values=pixels, slice_mask=mask, view_ids=view_ids(processor, chosen, device=device)
        )

    return encode


def _from_cache(model: ReportModelBase, encodings: Sequence[list[torch.Tensor]]) -> Encode:
    """The cached volume tokens of `cache_volume_tokens`, padded views masked."""
    device = module_device(model)

    def encode(index: list[int]) -> VisualEncoding:
        tokens, mask = pad_views([encodings[i] for i in index], device=device)
        return VisualEncoding(tokens=tokens.flatten(1, 2), mask=mask.flatten(1, 2))

    return encode


def baseline_stages(
    model: ReportModelBase,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    schedule: Schedule,
    *,
    seed: int,
) -> list[StageLog]:
    """LM warm-up; findings first when the schedule has them; then alignment and report tuning.

    After the findings stage the volume encoder is frozen and stages 2 and 3 read its cached
    output. Without one, stage 2 trains it with the bridge (from the pixels) and stage 3
    with the bridge, the findings head and the LM.
    """
    logs = [lm_warmup(model, processor, studies, schedule.lm_warmup, seed=seed)]
    encoder: list[nn.Module] = []  # the encoder modules stages 2 and 3 train
    if schedule.findings is None:
        encoder = [model.get_submodule("volume_encoder")]
        encode = _from_pixels(model, processor, studies)
    else:
        logs.append(baseline_findings(model, processor, studies, schedule.findings, seed=seed))
        start = time.perf_counter()
        encodings = cache_volume_tokens(model, processor, studies)
        logs.append(StageLog(name="volume token cache", seconds=time.perf_counter() - start))
        print(f"{logs[-1].name}: {len(encodings)} studies in {logs[-1].seconds:.1f} s", flush=True)
        encode = _from_cache(model, encodings)
    params = _only_train(model, *encoder, *_bridge_modules(model))
    model.train()
    step = _report_step(model, processor, studies, encode, with_findings=False)
    name = "stage2 encoder+bridge alignment" if encoder else "stage2 bridge alignment"
    logs.append(run_stage(name, params, schedule.align, len(studies), step, seed=seed + 3))
    if schedule.lora is not None:
        add_lora(model, schedule.lora)
        model.to(module_device(model))  # type: ignore[arg-type]
    head = _heads(model) if encoder else []  # the findings stage trained them otherwise
    params = _only_train(model, *encoder, *_bridge_modules(model), *head)
    params += _language_model_parameters(model, lora=schedule.lora is not None)
    model.train()
    step = _report_step(model, processor, studies, encode, with_findings=True)
    logs.append(run_stage("stage3 report tuning", params, schedule.tune, len(studies), step, seed=seed + 4))
    merge_lora(model)
    model.eval()
    return logs


def baseline_findings(
    model: ReportModelBase,
    processor: MsVlmProcessor,
    studies: Sequence[StudyRecord],
    settings: StageSettings,
    *,
    seed: int,
) -> StageLog:
    """The volume encoder and the findings head learn the study labels from the pixels.

    Why: MS-VLM's encoders learn the findings before the report loss sees them (stages 0b
    and 3a); the baseline gets the same advantage at the same budget, so that the comparison
    is of the encoder designs, not of the recipes.
    """
    params = _only_train(model, model.get_submodule("volume_encoder"), *_heads(model))
    model.train()
    step = _findings_step(model, processor, studies, _from_pixels(model, processor, studies))
    log = run_stage("stage3a findings from pixels", params, settings, len(studies), step, seed=seed + 6)
    model.eval()
    return log


@torch.no_grad()
def cache_volume_tokens(
    model: ReportModelBase, processor: MsVlmProcessor, studies: Sequence[StudyRecord]
) -> list[list[torch.Tensor]]:
    """The frozen volume encoder's patch tokens: per study, per view (P, D) float32 on the device."""
    model.eval()
    device = module_device(model)
    out = []
    for study in studies:
        pixels, mask = pad_views([list(study.pixels)], device=device)
        with training_autocast(device):
            encoding = model.encode_study(
                pixel_values=pixels, slice_mask=mask, view_ids=view_ids(processor, [study], device=device)
            )
        tokens = encoding.tokens.float().reshape(len(study.pixels), -1, encoding.tokens.shape[-1])
        out.append(list(tokens.unbind(0)))
    return out
