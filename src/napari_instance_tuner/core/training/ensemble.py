"""Ensembles: three-branch networks trained apart, assembled into one checkpoint whose maps are their mean.

An ensemble is a :class:`~..families.three_branch.model.ThreeBranchUNet` with ``members`` N > 1: N networks under
``members.0.``, ``members.1.``, ... whose sigmoid outputs are averaged; they may differ in architecture (a U-Net and
an EfficientNet-Lite0 encoder, say: ``architecture["member_architectures"]``) but not in input. Everything that
takes a network (tiled inference, the GUI, fine-tuning, packages) takes an ensemble as it is; the cost is N
network passes. Not in the three-branch paper (issue 20: averaging runs raised the malignant validation F1).
"""

from __future__ import annotations

import datetime as dt

from ..errors import InstanceTunerError, WeightsError
from ..io.checkpoint import LoadedModel, build_with_weights

__all__ = ["SHARED_ARCHITECTURE", "SHARED_META", "assemble", "cross_fit_assignment", "differences",
           "trained_images"]

#: Metadata the members must agree on, or their maps could not be averaged pixel for pixel (of ``architecture``,
#: only :data:`SHARED_ARCHITECTURE`).
SHARED_META = ("family", "pixel_scale", "normalisation", "in_channels", "tile_size", "tile_overlap", "architecture")
#: The architecture keys every member of an ensemble shares: its input and its output channels.
SHARED_ARCHITECTURE = ("in_channels", "branches")


def differences(meta: dict, other: dict) -> list[str]:
    """The :data:`SHARED_META` keys (``architecture``: only :data:`SHARED_ARCHITECTURE`) in which two models'
    metadata differ; empty if their maps can be averaged pixel for pixel."""
    keys = [k for k in SHARED_META if k != "architecture" and meta.get(k) != other.get(k)]
    return keys + [f"architecture.{k}" for k in SHARED_ARCHITECTURE
                   if meta["architecture"].get(k) != other["architecture"].get(k)]


def trained_images(meta: dict) -> set[str]:
    """The names of the images a model (every member of an ensemble) trained on, from its metadata; images
    outside this set may tune or validate it."""
    parts = [m.get("training", {}) for m in meta.get("ensemble", [])] or [meta.get("training", {})]
    return {n for t in parts for n in t.get("train_images") or []}


def cross_fit_assignment(metas: list[dict], names: list[str]) -> list[int]:
    """For each image of ``names``, the index of the one model of ``metas`` that never trained on it.

    Cross-fitting: models of one recipe trained on complementary parts of the data each segment the part they
    never saw, so every image gets maps of an unseen-image network. Those maps can tune (or validate) the
    post-processing of the same recipe trained on everything, which has no unseen images left.

    Raises
    ------
    InstanceTunerError
        If an image is unseen by no model (all trained on it) or by several (the assignment would be a choice).
    """
    trained = [trained_images(m) for m in metas]
    out = []
    for name in names:
        unseen = [i for i, t in enumerate(trained) if name not in t]
        if len(unseen) != 1:
            who = "every model trained on it" if not unseen else f"{len(unseen)} models never trained on it"
            raise InstanceTunerError(f"image {name} cannot be cross-fitted: {who} (exactly one must not have)")
        out.append(unseen[0])
    return out


def _value(meta: dict, key: str):
    """``meta[key]``, or ``meta["architecture"][k]`` for ``key`` ``"architecture.k"``."""
    return meta["architecture"].get(key.split(".", 1)[1]) if key.startswith("architecture.") else meta.get(key)


def _validation_images(loaded: LoadedModel) -> set[str]:
    return set(loaded.meta.get("training", {}).get("val_images") or [])


def assemble(members: list[LoadedModel], name: str) -> LoadedModel:
    """One ensemble model of ``members`` (2 to 8 three-branch models), untuned: its metadata is the first
    member's with ``architecture["members"]`` set and ``ensemble`` naming each member (name, SHA-256, training).
    Members of different architectures are listed in ``architecture["member_architectures"]``.

    Raises
    ------
    WeightsError
        If there are fewer than 2 or more than 8 members, a member is not a single three-branch network, or
        the members differ in any of :data:`SHARED_META` (of the architecture, in :data:`SHARED_ARCHITECTURE`) or
        in their validation images.
    """
    if not 2 <= len(members) <= 8:
        raise WeightsError(f"an ensemble needs 2 to 8 members, got {len(members)}")
    first = members[0]
    for member in members:
        if member.meta["family"] != "three-branch" or member.meta["architecture"].get("members", 1) != 1:
            raise WeightsError(f"{member.name} is not a single three-branch network; only those can be assembled")
        differ = differences(member.meta, first.meta)
        if differ:
            ours, theirs = (_value(m.meta, differ[0]) for m in (member, first))
            raise WeightsError(f"{member.name} has {differ[0]} {ours!r} where {first.name} has {theirs!r}: the "
                               "members' maps could not be averaged")
        if _validation_images(member) != _validation_images(first):
            raise WeightsError(f"{member.name} was validated on other images than {first.name}")
    meta = dict(first.meta)
    meta["name"] = name
    meta["architecture"] = {**first.meta["architecture"], "members": len(members)}
    archs = [m.meta["architecture"] for m in members]
    if any(a != archs[0] for a in archs):
        meta["architecture"]["member_architectures"] = archs
    meta["training"] = dict(first.meta.get("training", {}))
    meta["ensemble"] = [{"name": m.name, "sha256": m.sha256, "trained_on": m.meta.get("trained_on"),
                         "training": {k: v for k, v in m.meta.get("training", {}).items() if k != "history"}}
                        for m in members]
    meta["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    state = {f"members.{i}.{key}": value for i, m in enumerate(members) for key, value in m.model.state_dict().items()}
    family, model = build_with_weights(meta, state, name)
    return LoadedModel(family=family, model=model, meta=meta, path=first.path, sha256="")
