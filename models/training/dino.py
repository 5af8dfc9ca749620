"""Stage 0: DINO self-distillation of the slice encoder (MS-VLM's 2D ViT) on single slices.

A student and an EMA teacher share the ViT architecture plus a projection head; the teacher
sees two global crops of a slice, the student those and a few smaller local crops, and the
student learns to predict the teacher's centred, sharpened distribution over prototypes
(Caron et al. 2021). Augmentations are batched tensor ops (random resized crops via affine
grids, flips, intensity jitter, noise), driven by one seeded `torch.Generator` on the
backbone's device: random tensors are drawn where they are used (no per-step host-to-GPU
copies of noise), and on the CPU the stream is the one it always was. Forward passes run
under the device's training autocast (`device.training_autocast`); the loss is float32.
After training, the teacher's backbone is the slice encoder the later stages use.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTModel

from .device import module_device, training_autocast


@dataclass(frozen=True)
class DinoSettings:
    steps: int = 300
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.04
    warmup_steps: int = 30
    out_dim: int = 512
    hidden_dim: int = 256
    bottleneck_dim: int = 64
    local_crops: int = 2
    local_size: int = 32
    global_scale: tuple[float, float] = (0.5, 1.0)
    local_scale: tuple[float, float] = (0.15, 0.4)
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996
    log_every: int = 50


class DinoHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototypes."""

    def __init__(self, in_dim: int, settings: DinoSettings) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, settings.hidden_dim),
            nn.GELU(),
            nn.Linear(settings.hidden_dim, settings.hidden_dim),
            nn.GELU(),
            nn.Linear(settings.hidden_dim, settings.bottleneck_dim),
        )
        self.prototypes = nn.utils.parametrizations.weight_norm(
            nn.Linear(settings.bottleneck_dim, settings.out_dim, bias=False)
        )
        with torch.no_grad():
            self.prototypes.parametrizations.weight.original0.fill_(1.0)
        self.prototypes.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


class DinoNetwork(nn.Module):
    def __init__(self, backbone: ViTModel, head: DinoHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """Crops of equal size are encoded together; returns head outputs per crop, in order."""
        outputs = []
        for crop in crops:
            hidden = self.backbone(
                pixel_values=crop, interpolate_pos_encoding=crop.shape[-1] != self.backbone.config.image_size
            ).last_hidden_state[:, 0]
            outputs.append(self.head(hidden))
        return outputs


def random_resized_crop(
    images: torch.Tensor, size: int, scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """Batched random resized crops (aspect 3/4..4/3) with random horizontal flips."""
    n, device = images.shape[0], images.device
    area = torch.empty(n, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, device=device).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    width = (area * ratio).sqrt().clamp(max=1.0)
    height = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - width)
    cy = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = height
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random contrast/brightness per image and a little Gaussian noise (normalised pixels)."""
    n, device = images.shape[0], images.device
    contrast = torch.empty(n, 1, 1, 1, device=device).uniform_(0.8, 1.2, generator=generator)
    brightness = torch.empty(n, 1, 1, 1, device=device).uniform_(-0.1, 0.1, generator=generator)
    noise = torch.randn(images.shape, generator=generator, device=device) * 0.03
    return images * contrast + brightness + noise


class DinoLoss(nn.Module):
    def __init__(self, settings: DinoSettings) -> None:
        super().__init__()
        self.settings = settings
        self.center: torch.Tensor
        self.register_buffer("center", torch.zeros(1, settings.out_dim))

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        s = self.settings
        targets = [F.softmax((t - self.center) / s.teacher_temp, dim=-1) for t in teacher]
        total, terms = student[0].new_zeros(()), 0
        for ti, target in enumerate(targets):
            for si, logits in enumerate(student):
                if si == ti:
                    continue
                total = (
                    total + torch.sum(-target * F.log_softmax(logits / s.student_temp, dim=-1), dim=-1).mean()
                )
                terms += 1
        with torch.no_grad():
            batch_center = torch.cat(teacher).mean(dim=0, keepdim=True)
            self.center.mul_(s.center_momentum).add_(batch_center, alpha=1 - s.center_momentum)
        return total / terms


def _crops(
    images: torch.Tensor, settings: DinoSettings, generator: torch.Generator
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    size = images.shape[-1]
    global_crops = [
        jitter(random_resized_crop(images, size, settings.global_scale, generator), generator)
        for _ in range(2)
    ]
    local_crops = [
        jitter(random_resized_crop(images, settings.local_size, settings.local_scale, generator), generator)
        for _ in range(settings.local_crops)
    ]
    return global_crops, local_crops


def train_dino(
    backbone: ViTModel, slices: torch.Tensor, settings: DinoSettings, *, seed: int
) -> tuple[ViTModel, list[float]]:
    """Train `backbone` with DINO on `slices` (N, 3, S, S); returns the teacher backbone and losses.

    `backbone` is used as the student and is modified in place; training runs on its device
    (`slices` may stay on the CPU: each step's batch is gathered there and moved).
    """
    if slices.shape[0] == 0:
        raise ValueError("DINO needs at least one slice")
    device = module_device(backbone)
    generator = torch.Generator(device=device).manual_seed(seed)
    head = DinoHead(backbone.config.hidden_size, settings)
    student = DinoNetwork(backbone, head).to(device).train()
    # The teacher stays in train mode, as in DINO's reference code: a batch-norm stem then
    # normalises with batch statistics (and keeps its own running ones for later use). In
    # eval mode it used its running statistics, and DINO collapsed with the conv stem (loss
    # 5.12 -> 6.10 = log(out_dim), against 4.46 -> 3.30 in train mode). Without batch norm
    # (the linear patch embedding, no dropout) both modes compute the same.
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    criterion = DinoLoss(settings).to(device)
    parameters = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in parameters if p.ndim > 1]
    no_decay = [p for p in parameters if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(settings.steps):
        lr = settings.lr * min(1.0, (step + 1) / max(1, settings.warmup_steps))
        lr *= 0.5 * (1 + math.cos(math.pi * step / settings.steps)) if step >= settings.warmup_steps else 1.0
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(0, slices.shape[0], (settings.batch_size,), generator=generator, device=device)
        images = slices[index.to(slices.device)].to(device, non_blocking=True).float()
        global_crops, local_crops = _crops(images, settings, generator)
        with training_autocast(device):
            with torch.no_grad():
                teacher_out = teacher(global_crops)
            student_out = student([*global_crops, *local_crops])
        loss = criterion([s.float() for s in student_out], [t.float() for t in teacher_out])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 3.0)
        optimizer.step()
        momentum = 1 - (1 - settings.teacher_momentum) * (math.cos(math.pi * step / settings.steps) + 1) / 2
        with torch.no_grad():
            for p_t, p_s in zip(teacher.parameters(), student.parameters(), strict=True):
                p_t.mul_(momentum).add_(p_s.detach(), alpha=1 - momentum)
        losses.append(loss.item())
        if settings.log_every and ((step + 1) % settings.log_every == 0 or step == 0):
            print(
                f"  stage0 dino step {step + 1}/{settings.steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return teacher.backbone, losses
