import numpy as np
import pytest
import torch

from napari_instance_tuner.core.errors import InstanceTunerError, ParamsError, WeightsError
from napari_instance_tuner.core.io.checkpoint import file_card, load_model, read_checkpoint
from napari_instance_tuner.core.progress import CancelToken, run
from napari_instance_tuner.core.training.finetune import CorrectedImage, FinetuneSettings, finetune, save_finetuned
from napari_instance_tuner.core.training.loop import bfloat16_supported, refuse_amp


@pytest.fixture
def make_pair(disks_labels):
    """``make_pair(region=None) -> CorrectedImage``: three bright disks on a 48 x 48 image."""

    def make(region=None):
        labels = disks_labels((48, 48), ((14, 14), (14, 34), (34, 24)), 8)
        image = np.stack([(labels > 0) * 200 + 20] * 3, -1).astype(np.uint8)
        return CorrectedImage(image, labels, region)

    return make


def test_finetune_learns_trains_a_copy_and_records_its_parent(tiny_checkpoint, tmp_path, make_pair):
    loaded = load_model(tiny_checkpoint)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    settings = FinetuneSettings(steps=30, lr=3e-3, batch_size=2, crop=32, freeze_encoder=True)
    model, result = run(finetune(loaded, [make_pair()], settings))
    # The loaded model is untouched; the copy's decoders moved and its frozen encoder did not.
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    new = model.state_dict()
    enc = [k for k in new if k.startswith("encoder") and "running" not in k and "num_batches" not in k]
    dec = [k for k in new if k.startswith("decoders")]
    assert all(torch.equal(new[k], before[k]) for k in enc)
    assert any(not torch.equal(new[k], before[k]) for k in dec)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    out = save_finetuned(tmp_path / "tuned.safetensors", loaded, model, result, [make_pair()], settings)
    _, meta = read_checkpoint(out)
    assert meta["parent"]["sha256"] == loaded.sha256 and meta["finetune"]["data"][0]["objects"] == 3
    assert len(meta["finetune"]["history"]) == 30
    with pytest.raises(WeightsError, match="refusing to overwrite"):
        save_finetuned(tiny_checkpoint, loaded, model, result, [make_pair()], settings)


def test_a_fine_tuned_checkpoints_card_names_its_base_model_data_steps_and_date(tiny_checkpoint, tmp_path, make_pair):
    loaded = load_model(tiny_checkpoint)
    settings = FinetuneSettings(steps=3, batch_size=1, crop=32)
    model, result = run(finetune(loaded, [make_pair(), make_pair()], settings))
    out = save_finetuned(tmp_path / "mine.safetensors", loaded, model, result, [make_pair(), make_pair()], settings)
    tuned = load_model(out)
    card = file_card(tuned.meta, out.name)
    date = tuned.meta["finetune"]["date"]
    assert card["summary"] == f"fine-tuned from {loaded.name} on 2 images (6 objects), 3 steps, {date}"
    assert card["fine_tuned_from"] == f"{loaded.name} ({loaded.path.name})" and card["fine_tune_steps"] == 3
    assert card["file"] == "mine.safetensors" and card["fine_tuned_on"] == date
    # A checkpoint that was trained, not fine-tuned, names its training data; a package's card wins.
    assert "fine_tuned_from" not in file_card(loaded.meta, "tiny.safetensors")
    assert file_card({**loaded.meta, "card": {"summary": "from a package"}}, "x")["summary"] == "from a package"


def test_region_limits_training_and_bad_pairs_are_refused(tiny_checkpoint, make_pair):
    loaded = load_model(tiny_checkpoint)
    region = np.zeros((48, 48), bool)
    region[:24] = True
    _, result = run(finetune(loaded, [make_pair(region)], FinetuneSettings(steps=2, batch_size=1, crop=32)))
    assert len(result.history) == 2
    with pytest.raises(InstanceTunerError, match="at least one"):
        run(finetune(loaded, [], FinetuneSettings()))
    with pytest.raises(InstanceTunerError, match="do not match"):
        run(finetune(loaded, [CorrectedImage(np.zeros((10, 10)), np.zeros((5, 5), int))], FinetuneSettings()))
    with pytest.raises(InstanceTunerError, match="region is empty"):
        run(finetune(loaded, [make_pair(np.zeros((48, 48), bool))], FinetuneSettings()))


def test_cancel_keeps_the_loaded_model(tiny_checkpoint, make_pair):
    loaded = load_model(tiny_checkpoint)
    token = CancelToken()
    gen = finetune(loaded, [make_pair()], FinetuneSettings(steps=50, batch_size=1, crop=32), cancel=token)
    next(gen)
    token.cancel()
    _, result = run(gen)
    assert result.stopped == "cancelled" and len(result.history) < 50


@pytest.mark.skipif(not bfloat16_supported("cpu"), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_finetune_with_amp_learns_and_records_it(tiny_checkpoint, tmp_path, make_pair):
    loaded = load_model(tiny_checkpoint)
    settings = FinetuneSettings(steps=30, lr=3e-3, batch_size=2, crop=32, amp=True)
    model, result = run(finetune(loaded, [make_pair()], settings))
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())
    out = save_finetuned(tmp_path / "amp.safetensors", loaded, model, result, [make_pair()], settings)
    _, meta = read_checkpoint(out)
    assert meta["finetune"]["settings"]["amp"] is True


def test_amp_is_allowed_for_every_family_and_refused_for_one_that_trains_in_float32_only(monkeypatch):
    from napari_instance_tuner.core.registry import family_names, get_family

    for name in family_names():  # Mask R-CNN too: its training step runs under fit's autocast
        refuse_amp(get_family(name), True)  # no error
    family = get_family("maskrcnn")
    monkeypatch.setattr(type(family), "supports_amp", False)
    with pytest.raises(ParamsError, match="maskrcnn trains in float32"):
        refuse_amp(family, True)
    refuse_amp(family, False)


def test_a_time_budget_stops_training_before_the_steps_run_out(tiny_checkpoint, make_pair):
    loaded = load_model(tiny_checkpoint)
    settings = FinetuneSettings(steps=500, batch_size=1, crop=32, seconds=1e-6)  # any step outlasts the budget
    _, result = run(finetune(loaded, [make_pair()], settings))
    assert result.stopped == "time limit" and len(result.history) == 1
    with pytest.raises(InstanceTunerError, match="time budget"):
        FinetuneSettings(seconds=0)


def test_mixed_precision_is_kept_only_where_the_family_and_device_compute_in_bfloat16(tiny_checkpoint, monkeypatch):
    from dataclasses import replace

    from napari_instance_tuner.core.training import precision

    family = load_model(tiny_checkpoint).family
    asked = FinetuneSettings(amp=True)
    monkeypatch.setattr(precision, "bfloat16_supported", lambda device: device == "cuda")
    assert precision.with_amp_where_native(family, asked, "cuda").amp is True
    assert precision.with_amp_where_native(family, asked, "cpu") == replace(asked, amp=False)
    monkeypatch.setattr(type(family), "supports_amp", False)
    assert precision.with_amp_where_native(family, asked, "cuda").amp is False
    assert precision.with_amp_where_native(family, FinetuneSettings(), "cuda").amp is False
