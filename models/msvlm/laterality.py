"""Which side of the patient a finding lies on, from the patch token that shows it.

A radiologist finds the nodule, then says which lung it is in; the site head instead reads a
lobe from the finding's pooled vector, and learnt where the training images put a finding
rather than which side of the body it is on (README "Which side"). Here the slice encoder's
token head (`MsVlmConfig.token_side_findings`) picks the slice and patch token that score a
finding highest; the side is where that token lies against the body's midline in that slice,
turned into patient coordinates by the view's ImageOrientationPatient, so a mirrored or
prone acquisition reads the same side as a standard one. That side then restricts the site
head's choice to the sites on it (`constrain_sites`): the head still picks the lobe.

Everything here is a pure tensor function, so it can be tested on made-up scores.
"""

from __future__ import annotations

import math

import torch

from .configuration_msvlm import site_side

#: the share of the way from a slice's darkest to its brightest value above which a pixel is
#: body: air and lung (about 0.08 and 0.11 of the demo windows' mean, mean of three channels)
#: lie below, fat (0.39) and everything denser above; MR background lies near 0
BODY_LEVEL = 0.25
#: a view tells left from right when a direction in its plane is at least this close to the
#: patient's left-right axis (axial and coronal views; a sagittal view's plane has none)
LATERAL_COSINE = 0.5
#: `sides` value where no side is read
UNKNOWN_SIDE = -1


def body_centre(slices: torch.Tensor) -> torch.Tensor:
    """(n, C, S, S) processed slices -> (n, 2) centre (across, down) of the body in each, as
    fractions of the slice (0 the left or top edge); the slice's centre where none is body."""
    image = slices.detach().float().mean(dim=1)
    low = image.amin(dim=(1, 2), keepdim=True)
    high = image.amax(dim=(1, 2), keepdim=True)
    body = (image > low + BODY_LEVEL * (high - low)).float()
    size = image.shape[-1]
    axis = (torch.arange(size, device=image.device, dtype=torch.float32) + 0.5) / size
    count = body.sum(dim=(1, 2))
    across = (body.sum(dim=1) * axis).sum(dim=-1) / count.clamp(min=1.0)
    down = (body.sum(dim=2) * axis).sum(dim=-1) / count.clamp(min=1.0)
    centre = torch.stack([across, down], dim=-1)
    return torch.where((count > 0).unsqueeze(-1), centre, torch.full_like(centre, 0.5))


def token_offsets(token_logits: torch.Tensor, slices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per slice and finding, the best patch token's score and where it lies against the body.

    `token_logits` (n, T, F) score the T patch tokens of a square grid (row by row, as the ViT
    orders them) of the `slices` (n, C, S, S). Returns the best token's logit (n, F) and the
    offset (n, F, 2) of its centre from `body_centre`, (across, down) as fractions of the slice.
    """
    grid = math.isqrt(token_logits.shape[1])
    if grid * grid != token_logits.shape[1]:
        raise ValueError(f"{token_logits.shape[1]} patch tokens do not make a square grid")
    scores, best = token_logits.float().max(dim=1)
    places = torch.stack([best % grid, torch.div(best, grid, rounding_mode="floor")], dim=-1)
    places = (places.float() + 0.5) / grid
    return scores, places - body_centre(slices).unsqueeze(1)


def sides(
    scores: torch.Tensor,
    offsets: torch.Tensor,
    orientations: torch.Tensor,
    findings: torch.Tensor,
) -> torch.Tensor:
    """(B, F) side of each finding in `findings`: 0 the patient's right, 1 the left, -1 unknown.

    `scores` (B, V, Z, F) and `offsets` (B, V, Z, F, 2) come from `token_offsets`, with scores
    of -inf for padding slices; `orientations` (B, V, 6) hold each view's
    ImageOrientationPatient (row then column direction cosines, patient LPS, whose x points to
    the patient's left), zeros where unknown; `findings` (F,) bool selects the findings to read.
    The finding's best-scoring token over every slice of the views that tell left from right
    decides; the side is unknown when no such view exists or the token lies on the midline.
    """
    leftward = orientations.float()[..., [0, 3]]  # (B, V, 2): x of the across and down directions
    lateral = leftward.abs().amax(dim=-1) >= LATERAL_COSINE
    masked = scores.float().masked_fill(~lateral[:, :, None, None], -math.inf)  # (B, V, Z, F)
    batch, views, depth, labels = masked.shape
    flat = masked.reshape(batch, views * depth, labels)
    best, where = flat.max(dim=1)  # (B, F)
    view = torch.div(where, depth, rounding_mode="floor")
    chosen = offsets.float().reshape(batch, views * depth, labels, 2)
    offset = chosen.gather(1, where[:, None, :, None].expand(-1, 1, -1, 2)).squeeze(1)  # (B, F, 2)
    direction = leftward.gather(1, view.unsqueeze(-1).expand(-1, -1, 2))  # (B, F, 2)
    toward_left = (offset * direction).sum(dim=-1)
    side = torch.where(toward_left > 0, 1, 0)
    known = torch.isfinite(best) & (toward_left != 0) & findings.to(best.device).unsqueeze(0)
    return torch.where(known, side, UNKNOWN_SIDE)


def site_sides(sites: list[list[str]], findings: set[int], width: int) -> torch.Tensor:
    """(F, width) side of each finding's sites (`configuration_msvlm.site_side`), -1 where the
    finding is not read by its token or the slot holds no site."""
    out = torch.full((len(sites), width), UNKNOWN_SIDE, dtype=torch.long)
    for j, names in enumerate(sites):
        if j in findings:
            for s, name in enumerate(names):
                side = site_side(name)
                out[j, s] = UNKNOWN_SIDE if side is None else side
    return out


def constrain_sites(
    site_logits: torch.Tensor, finding_sides: torch.Tensor, sides_of_sites: torch.Tensor, fill: float
) -> torch.Tensor:
    """Set to `fill` the (B, F, S) site logits of sites not on the finding's read side.

    `finding_sides` (B, F) from `sides`, `sides_of_sites` (F, S) from `site_sides`. A finding
    whose side is unknown, or with no site on the side read, keeps its logits.
    """
    sides_of_sites = sides_of_sites.to(site_logits.device)
    read = finding_sides.unsqueeze(-1)  # (B, F, 1)
    wrong = (read >= 0) & (sides_of_sites >= 0) & (sides_of_sites != read)
    keeps_one = ((sides_of_sites == read) & (read >= 0)).any(dim=-1, keepdim=True)
    return site_logits.masked_fill(wrong & keeps_one, fill)
