import numpy as np

from napari_instance_tuner.core.inference.map_display import display_maps


def test_per_layer_maps_are_masked_by_the_foreground_and_main_maps_are_not():
    fg = np.array([[0.0, 0.5, 1.0]], np.float32)
    layer = np.full((1, 3), 0.8, np.float32)
    shown = display_maps({"foreground": fg, "boundary": layer, "layer_1": layer}, {"boundary"})
    assert shown["foreground"] is fg and shown["boundary"] is layer
    assert shown["layer_1"].dtype == np.float32 and np.allclose(shown["layer_1"], [[0.0, 0.4, 0.8]])
    assert display_maps({"layer_1": layer})["layer_1"] is layer  # nothing to mask with
