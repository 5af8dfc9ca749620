"""Which side of the patient a finding lies on, from the patch token that shows it.

A radiologist finds the nodule, then says which lung it is in; the site head instead reads a
lobe from the finding's pooled vector, and learnt where the training images put a finding
rather than which side of the body it is on (README "Which side"). Here the slice encoder's
token head (`MsVlmConfig.token_side_findings`) scores every patch token of every slice; the
body's midline in each slice, turned into patient coordinates by the view's
ImageOrientationPatient, splits those tokens into the patient's right and left, so a mirrored
or prone acquisition reads the same side as a standard one. The side whose best token scores
higher is the finding's side, or both when each side's best token shows it (a bilateral
effusion). That side then restricts the site head's choice to the sites on it
(`constrain_sites`): the head still picks the lobe. The same scores say on which slice a
finding shows best (`key_slices`), the image the SR points the radiologist to.

Everything here is a pure tensor function, so it can be tested on made-up scores.
"""

from __future__ import annotations

import math

import torch

from .configuration_msvlm import SIDES, site_side

#: the share of the way from a slice's darkest to its brightest value above which a pixel is
#: body: air and lung (about 0.08 and 0.11 of the demo windows' mean, mean of three channels)
#: lie below, fat (0.39) and everything denser above; MR background lies near 0
BODY_LEVEL = 0.25
#: a view tells left from right when a direction in its plane is at least this close to the
#: patient's left-right axis (axial and coronal views; a sagittal view's plane has none)
LATERAL_COSINE = 0.5
#: `sides` value where no side is read
UNKNOWN_SIDE = -1
#: `sides` value of a finding read on both sides, and `site_sides` value of a site on both
BOTH_SIDES = 2
#: names of the `sides` values 0, 1 and `BOTH_SIDES`, as a job's result records them
SIDE_NAMES: tuple[str, ...] = (*SIDES, "both")
#: a token head logit at or above which a finding shows (probability 0.5): a finding that may
#: lie on both sides lies on both when the best token of each side reaches it. On the
#: validation phantoms (version 6) the other side of a unilateral effusion scored at most -0.7,
#: each side of a bilateral one at least 5.3
BOTH_LOGIT = 0.0
#: a finding's key slice is one whose best token shows it (probability 0.5 or more)
KEY_SLICE_LOGIT = 0.0


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


def token_halves(token_logits: torch.Tensor, slices: torch.Tensor) -> torch.Tensor:
    """Per slice and finding, the best patch token's logit in each half of the slice.

    `token_logits` (n, T, F) score the T patch tokens of a square grid (row by row, as the ViT
    orders them) of the `slices` (n, C, S, S). Returns (n, F, 4): the best logit among the
    tokens whose centre lies before and after `body_centre` across the slice, then above and
    below it; -inf where no token does (a token on the centre line lies in neither half).
    Why halves, not the one best token: a finding on both sides (a bilateral effusion) lights
    a token on each, and only the best of each side says so (`sides`).
    """
    grid = math.isqrt(token_logits.shape[1])
    if grid * grid != token_logits.shape[1]:
        raise ValueError(f"{token_logits.shape[1]} patch tokens do not make a square grid")
    axis = (torch.arange(grid, device=token_logits.device, dtype=torch.float32) + 0.5) / grid
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    centres = torch.stack([cols.flatten(), rows.flatten()], dim=-1)  # (T, 2) as (across, down)
    offsets = centres.unsqueeze(0) - body_centre(slices).unsqueeze(1)  # (n, T, 2)
    logits = token_logits.float()
    halves = []
    for dim in (0, 1):
        for inside in (offsets[..., dim] < 0, offsets[..., dim] > 0):
            halves.append(logits.masked_fill(~inside.unsqueeze(-1), -math.inf).amax(dim=1))
    return torch.stack(halves, dim=-1)


def best_tokens(token_logits: torch.Tensor) -> torch.Tensor:
    """(n, T, F) patch-token logits -> (n, F) long: per slice and finding, the token (row by row
    in the ViT's grid) that scores it highest; where on a key slice the finding lies
    (`MsVlmProcessor.token_region`). Ties go to the first token."""
    return token_logits.argmax(dim=1)


def sides(
    halves: torch.Tensor,
    orientations: torch.Tensor,
    findings: torch.Tensor,
    bilateral: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, F) side of each finding in `findings`: 0 the patient's right, 1 the left,
    `BOTH_SIDES`, -1 unknown.

    `halves` (B, V, Z, F, 4) come from `token_halves`, -inf on padding slices; `orientations`
    (B, V, 6) hold each view's ImageOrientationPatient (row then column direction cosines,
    patient LPS, whose x points to the patient's left), zeros where unknown; `findings` (F,)
    bool selects the findings to read, `bilateral` (F,) those that may lie on both sides.
    In each view that tells left from right, the in-plane direction closest to the patient's
    left-right axis splits its tokens into the patient's right and left; over all such views
    and slices, the side whose best token scores higher decides. A finding that may lie on
    both sides does when the best token of each side scores `BOTH_LOGIT` or more. The side is
    unknown when no such view exists or both sides score alike (a token on the midline).
    """
    leftward = orientations.float()[..., [0, 3]]  # (B, V, 2): x of the across and down directions
    axis = leftward.abs().argmax(dim=-1)  # (B, V)
    lateral = leftward.abs().amax(dim=-1) >= LATERAL_COSINE
    toward_left = leftward.gather(-1, axis.unsqueeze(-1)).squeeze(-1) > 0  # the axis runs leftward
    # (B, V, 1, 1) index of each half among the four: before/after across, above/below down
    after = (2 * axis + 1)[:, :, None, None]
    before = (2 * axis)[:, :, None, None]
    left_half = torch.where(toward_left[:, :, None, None], after, before)
    right_half = torch.where(toward_left[:, :, None, None], before, after)
    hidden = ~lateral[:, :, None, None]

    def best(half: torch.Tensor) -> torch.Tensor:
        index = half.unsqueeze(-1).expand(*halves.shape[:-1], 1)
        scores = halves.float().gather(-1, index).squeeze(-1).masked_fill(hidden, -math.inf)
        return scores.amax(dim=(1, 2))  # (B, F)

    left, right = best(left_half), best(right_half)
    side = torch.where(left > right, 1, 0)
    known = torch.maximum(left, right).isfinite() & (left != right) & findings.to(left.device).unsqueeze(0)
    if bilateral is not None:
        both = bilateral.to(left.device).unsqueeze(0) & (torch.minimum(left, right) >= BOTH_LOGIT)
        side = torch.where(both, BOTH_SIDES, side)
    return torch.where(known, side, UNKNOWN_SIDE)


def site_sides(sites: list[list[str]], findings: set[int], width: int) -> torch.Tensor:
    """(F, width) side of each finding's sites (`configuration_msvlm.site_side`), -1 where the
    finding is not read by its token or the slot holds no site. A read finding's site on
    neither side ("bilateral") is `BOTH_SIDES`: a finding whose side a token reads lies on
    one side, the other or both."""
    out = torch.full((len(sites), width), UNKNOWN_SIDE, dtype=torch.long)
    for j, names in enumerate(sites):
        if j in findings:
            for s, name in enumerate(names):
                side = site_side(name)
                out[j, s] = BOTH_SIDES if side is None else side
    return out


def constrain_sites(
    site_logits: torch.Tensor, finding_sides: torch.Tensor, sides_of_sites: torch.Tensor, fill: float
) -> torch.Tensor:
    """Set to `fill` the (B, F, S) site logits of sites not on the finding's read side.

    `finding_sides` (B, F) from `sides`, `sides_of_sites` (F, S) from `site_sides`: a finding
    read on one side keeps the sites on that side, one read on both its sites on both
    ("bilateral"). A finding whose side is unknown, or with no site on the side read, keeps
    its logits.
    """
    sides_of_sites = sides_of_sites.to(site_logits.device)
    read = finding_sides.unsqueeze(-1)  # (B, F, 1)
    wrong = (read >= 0) & (sides_of_sites >= 0) & (sides_of_sites != read)
    keeps_one = ((sides_of_sites == read) & (read >= 0)).any(dim=-1, keepdim=True)
    return site_logits.masked_fill(wrong & keeps_one, fill)


def key_slices(halves: torch.Tensor, tokens: torch.Tensor, findings: torch.Tensor) -> torch.Tensor:
    """(B, V, Z, F, 4) `token_halves` (-inf on padding), (B, V, Z, F) each slice's best patch
    token (`best_tokens`), (F,) bool -> (B, F, 3) long: per selected finding the (view, slice)
    with the best token, and that token, where it reaches `KEY_SLICE_LOGIT`; -1, -1, -1 for
    the others. Ties go to the first view and slice."""
    batch, views, slices, labels, _ = halves.shape
    best, flat = halves.amax(dim=-1).permute(0, 3, 1, 2).reshape(batch, labels, views * slices).max(dim=-1)
    per_slice = tokens.to(flat.device).permute(0, 3, 1, 2).reshape(batch, labels, views * slices)
    token = per_slice.gather(-1, flat.unsqueeze(-1)).squeeze(-1)
    out = torch.stack([flat // slices, flat % slices, token], dim=-1)
    shown = (best >= KEY_SLICE_LOGIT) & findings.to(best.device)[None, :]
    return torch.where(shown[..., None], out, torch.full_like(out, -1))
