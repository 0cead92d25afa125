"""The layering paper's losses, equations (1)-(6), on embeddings ``e = sigmoid(layering logits)``.

Notation (section 2.2): objects O_i, their overlap-free parts O_i^n, mean embeddings
u_i = mean of e_p over O_i^n, cosine similarity D. Areas: S the whole image, S_f the foreground,
S_fn the overlap-free foreground.

- (2) L_attr = 1 - (1 / sum_i |O_i^n|) sum_i sum_{p in O_i^n} D(e_p, u_i)^2
- (3) L_rep = (1 / C) sum_i (1 / |Adj(O_i)|) sum_{j in Adj(O_i)} D(u_i, u_j)^2
  (an object without neighbours contributes 0; C counts the objects present)
- (4) L_sparse = 1 - (1 / sum_i |O_i^n|) sum_i sum_{p in O_i^n} max(e_p / ||e_p||)
- (5) L_layering = L_attr + L_rep + lambda L_sparse, lambda = 0.1, on S_fn
- (6) L_overlap = 1 - 2 sum_i sum_{p in O_i} e_p.S_p / sum_i sum_{p in O_i} (1.e_p + 1.S_p), on S_f;
  the double sum visits a pixel once per object that covers it, so overlap pixels weigh more.
- (1) L = [L_foreground]_S + [L_layering]_S_fn + [L_overlap]_S_f (phase 2 only); L_foreground is binary
  cross-entropy.

Each term is computed per image and averaged over the images of the batch that have objects.
The target stack S of phase 2 puts each object's whole silhouette into the layer where its
overlap-free part lives (argmax of u_i). Deliberate difference: the paper derives S once from the best
phase-1 model; here it is derived on every batch from the current model's own u_i (detached), which
equals the paper's S at the start of phase 2 and stays consistent under the rotations of augmentation
(a layer may encode orientation, the paper's figure 5). Optional difference (off by default,
``separate_targets``): where two adjacent objects have the same arg-max layer, S puts the one that lives
less clearly in that layer into its best free layer (:func:`layer_assignment`). With the plain arg-max, such
a pair gets little or no push apart: a BBBC010 model trained that way had collapsed onto 3 of its 8 layers
(docs/benchmarks.md, run 2) with a third of adjacent worm pairs sharing a layer; L_rep has
no gradient between identical embeddings (cos = 1 is its maximum) and none into layers whose sigmoid is
saturated at 0, and L_overlap with the arg-max S pushes every unused layer further towards 0.
It reduced merged worms, but over equal training time it did not raise the validation score
(docs/benchmarks.md), so it is off by default. Another option (``fixed_targets``, the paper's own S): each
object's layer is assigned once, on its whole training image, by the model that starts phase 2, and kept
for every crop of phase 2 (:func:`~.train.fixed_layers`; pasted objects, which have no fixed layer, are
assigned per batch around the fixed ones). It is off by default: the BBBC010 model's layers largely encode a
worm's orientation (a 90-degree rotation changes the layer of 76 % of its worms), so a fixed layer contradicts
half of the rotated training crops, and 47 CPU minutes from the shipped weights did not raise the
validation score. More generally, under rotation and flip augmentation a fixed layer can only be met by
memorising each training object (an isolated object is equally right in any layer), whereas the per-batch
S asks for the assignment nearest the network's own output (docs/benchmarks.md).

A second optional addition to phase 2 (``layer_bce_weight`` > 0, default 0 = the paper's): binary
cross-entropy between the layering logits and S on the foreground (summed over the N layers, averaged
over the foreground pixels). L_overlap acts on ``e = sigmoid(logit)``, so its gradient to a layer carries
the factor ``e (1 - e)``: a layer saturated at 0 (1e-8 on the BBBC010 model's five unused layers) cannot
be raised by it, even when the separated S asks for it. The cross-entropy's gradient to the logit is
``e - S``, which does not vanish there. In 52 CPU minutes from the shipped BBBC010 weights (with the
separated S) it cut the adjacent worm pairs sharing a layer to 18 of 91 (a control without it: 24), but
split more worms along their length (10; the control: 4) and did not raise the validation score
(docs/benchmarks.md), so it is off by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-6


@dataclass
class LayeringTargets:
    """Per-crop ground truth of a batch.

    Attributes
    ----------
    objects : torch.Tensor
        bool (B, K, H, W): each object's exact mask (overlaps kept); padded with empty masks.
    adjacency : torch.Tensor
        bool (B, K, K): objects closer than the adjacency distance t (symmetric, False on the diagonal).
    layers : torch.Tensor or None
        int64 (B, K): each object's fixed layer in the target stack S of phase 2 (the paper's S, assigned
        once per training image, see :func:`~.train.fixed_layers`); -1 where none is fixed (padding, pasted
        objects), and None when S is derived from the current model on every batch.
    """

    objects: torch.Tensor
    adjacency: torch.Tensor
    layers: torch.Tensor | None = None

    def to(self, device) -> LayeringTargets:
        """The same targets on ``device``."""
        return LayeringTargets(self.objects.to(device), self.adjacency.to(device),
                               None if self.layers is None else self.layers.to(device))


def _unit(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / (x.norm(dim=dim, keepdim=True) + EPS)


def mean_embeddings(emb: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u_i per object and the pixel counts |O_i^n|.

    Parameters
    ----------
    emb : torch.Tensor
        float (B, N, H, W) embeddings.
    member : torch.Tensor
        bool (B, K, H, W): the overlap-free part O_i^n of each object.

    Returns
    -------
    u : float (B, K, N); counts : float (B, K)
    """
    m = member.to(emb.dtype)
    counts = m.sum(dim=(2, 3))
    sums = torch.einsum("bkhw,bnhw->bkn", m, emb)
    return sums / counts.clamp(min=1)[..., None], counts


def _per_image_mean(values: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """Mean of per-image loss values over the images where the term is defined (0 if none)."""
    if not bool(has.any()):
        return values.sum() * 0
    return values[has].mean()


def attraction_loss(emb: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """Equation (2), averaged over images with objects; ``emb`` (B, N, H, W), ``member`` bool (B, K, H, W)."""
    u, _ = mean_embeddings(emb, member)
    cos = torch.einsum("bnhw,bkn->bkhw", _unit(emb, 1), _unit(u, -1))
    m = member.to(emb.dtype)
    n = m.sum(dim=(1, 2, 3))
    values = 1 - (cos.square() * m).sum(dim=(1, 2, 3)) / n.clamp(min=1)
    return _per_image_mean(values, n > 0)


def repulsion_loss(u: torch.Tensor, adjacency: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Equation (3) from mean embeddings ``u`` (B, K, N), ``adjacency`` bool (B, K, K), ``present`` bool (B, K)."""
    un = _unit(u, -1)
    sim = torch.einsum("bkn,bjn->bkj", un, un).square()
    adj = adjacency & present[:, :, None] & present[:, None, :]
    adj = adj & ~torch.eye(adj.shape[-1], dtype=torch.bool, device=adj.device)
    n_adj = adj.sum(-1)
    per_object = (sim * adj).sum(-1) / n_adj.clamp(min=1)
    c = present.sum(-1)
    values = per_object.sum(-1) / c.clamp(min=1)
    return _per_image_mean(values, c > 0)


def sparsity_loss(emb: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Equation (4) on the overlap-free foreground ``free`` bool (B, H, W)."""
    peak = _unit(emb, 1).amax(dim=1)
    f = free.to(emb.dtype)
    n = f.sum(dim=(1, 2))
    values = 1 - (peak * f).sum(dim=(1, 2)) / n.clamp(min=1)
    return _per_image_mean(values, n > 0)


def overlap_loss(emb: torch.Tensor, stack: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Equation (6): ``stack`` S float (B, N, H, W) in {0, 1}; ``weight`` (B, H, W) = objects covering a pixel."""
    w = weight.to(emb.dtype)
    inter = ((emb * stack).sum(1) * w).sum(dim=(1, 2))
    total = ((emb.sum(1) + stack.sum(1)) * w).sum(dim=(1, 2))
    values = 1 - 2 * inter / total.clamp(min=EPS)
    return _per_image_mean(values, w.sum(dim=(1, 2)) > 0)


def layer_cross_entropy(logits: torch.Tensor, stack: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the layering logits against S, summed over layers, mean over ``foreground``.

    Parameters
    ----------
    logits : torch.Tensor
        float (B, N, H, W) layering logits (before the sigmoid).
    stack : torch.Tensor
        float (B, N, H, W) target stack S in {0, 1}.
    foreground : torch.Tensor
        bool (B, H, W): the pixels that count (S_f).

    Returns
    -------
    torch.Tensor
        Scalar: per-image mean over the foreground pixels, averaged over images with foreground.
    """
    f = foreground.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, stack, reduction="none").sum(1)
    n = f.sum(dim=(1, 2))
    return _per_image_mean((bce * f).sum(dim=(1, 2)) / n.clamp(min=1), n > 0)


def layer_assignment(u: torch.Tensor, present: torch.Tensor, adjacency: torch.Tensor | None = None,
                     fixed: torch.Tensor | None = None) -> torch.Tensor:
    """Each object's layer for the target stack S: ``argmax(u_i)``, made conflict-free when ``adjacency`` is given.

    Parameters
    ----------
    u : torch.Tensor
        float (B, K, N) mean embeddings of the overlap-free parts.
    present : torch.Tensor
        bool (B, K).
    adjacency : torch.Tensor, optional
        bool (B, K, K). When given, adjacent objects never share a layer: objects are visited from the
        one that lives most clearly in one layer (largest ``max(u_i / ||u_i||)``) to the least, and each
        takes its largest-activation layer among those no already visited neighbour holds (a greedy
        colouring; with N layers it always succeeds for objects with fewer than N neighbours, else the
        object keeps its arg-max).
    fixed : torch.Tensor, optional
        int64 (B, K): layers already assigned (kept as they are), -1 where the object is assigned here. With
        ``adjacency``, the fixed objects are visited first.

    Returns
    -------
    torch.Tensor
        int64 (B, K) layer indices (meaningless where not ``present``).
    """
    layer = u.argmax(-1)
    if fixed is not None:
        layer = torch.where(fixed >= 0, fixed.to(layer.device), layer)
    if adjacency is None:
        return layer
    peak = (u / (u.norm(dim=-1, keepdim=True) + EPS)).amax(-1).cpu().numpy()
    u_np, adj_np, present_np = u.cpu().numpy(), adjacency.cpu().numpy(), present.cpu().numpy()
    is_fixed = fixed.cpu().numpy() >= 0 if fixed is not None else np.zeros_like(present_np)
    layer = layer.cpu().clone()
    for b in range(u_np.shape[0]):
        if not (adj_np[b] & present_np[b][None] & present_np[b][:, None]).any():
            continue
        taken: dict[int, int] = {}
        for i in np.argsort(np.where(is_fixed[b], -np.inf, -peak[b]), kind="stable"):  # fixed objects first
            if not present_np[b, i]:
                continue
            if is_fixed[b, i]:  # keeps its layer
                taken[i] = int(layer[b, i])
                continue
            used = {taken[j] for j in np.flatnonzero(adj_np[b, i]) if j in taken}
            free = [k for k in np.argsort(-u_np[b, i], kind="stable") if k not in used]
            taken[i] = int(free[0]) if free else int(layer[b, i])
            layer[b, i] = taken[i]
    return layer.to(u.device)


def target_stack(objects: torch.Tensor, u: torch.Tensor, present: torch.Tensor,
                 adjacency: torch.Tensor | None = None, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """S (B, N, H, W) float: every object's silhouette in its layer (:func:`layer_assignment`)."""
    n_layers = u.shape[-1]
    layer = layer_assignment(u, present, adjacency, fixed)
    onehot = F.one_hot(layer, n_layers).to(u.dtype) * present[..., None].to(u.dtype)
    return torch.einsum("bkhw,bkn->bnhw", objects.to(u.dtype), onehot).clamp(max=1)


@dataclass(frozen=True)
class LayeringLoss:
    """Equation (1) as a ``loss_fn(logits, targets, valid) -> (loss, parts)`` for :func:`~...training.loop.fit`.

    Attributes
    ----------
    phase : int
        1 = layering training; 2 = overlap completion (adds L_overlap).
    sparse_weight : float
        lambda of equation (5) (paper: 0.1).
    separate_targets : bool
        Phase 2: adjacent objects never share a layer of S (:func:`layer_assignment`); False (default) =
        the paper's plain arg-max.
    layer_bce_weight : float
        Phase 2: weight of :func:`layer_cross_entropy` between the layering logits and S (default 0, the
        paper's loss).
    """

    phase: int = 1
    sparse_weight: float = 0.1
    separate_targets: bool = False
    layer_bce_weight: float = 0.0

    def __call__(self, logits: torch.Tensor, targets: LayeringTargets, valid: torch.Tensor):
        valid = valid[:, 0] > 0
        objects = targets.objects & valid[:, None]
        cover = objects.sum(1)
        fg = (cover > 0).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits[:, 0], fg, reduction="none")
        l_fg = (bce * valid).sum() / valid.sum().clamp(min=1)
        emb = torch.sigmoid(logits[:, 1:].float())
        free = cover == 1
        member = objects & free[:, None]
        u, counts = mean_embeddings(emb, member)
        present = counts > 0
        l_attr = attraction_loss(emb, member)
        l_rep = repulsion_loss(u, targets.adjacency, present)
        l_sparse = sparsity_loss(emb, free)
        loss = l_fg + l_attr + l_rep + self.sparse_weight * l_sparse
        parts = {k: float(v.detach()) for k, v in
                 (("foreground", l_fg), ("attr", l_attr), ("rep", l_rep), ("sparse", l_sparse))}
        if self.phase == 2:
            stack = target_stack(objects, u.detach(), present, targets.adjacency if self.separate_targets else None,
                                 targets.layers)
            l_overlap = overlap_loss(emb, stack, cover)
            loss = loss + l_overlap
            parts["overlap"] = float(l_overlap.detach())
            if self.layer_bce_weight > 0:
                l_bce = layer_cross_entropy(logits[:, 1:].float(), stack, cover > 0)
                loss = loss + self.layer_bce_weight * l_bce
                parts["layer_bce"] = float(l_bce.detach())
        return loss, parts
