from dataclasses import dataclass

import pytest

from napari_instance_tuner.core.errors import Cancelled, ParamsError
from napari_instance_tuner.core.params import param, param_specs, params_from_dict, params_to_dict
from napari_instance_tuner.core.progress import CancelToken, Progress, run


@dataclass(frozen=True)
class P:
    t: float = param(0.5, 0.0, 1.0, "a threshold")
    r: int = param(3, 0, 10, "a radius")
    on: bool = param(True, description="a switch")


def test_specs_carry_ranges_and_descriptions():
    specs = {s.name: s for s in param_specs(P)}
    assert specs["t"].low == 0.0 and specs["t"].high == 1.0 and specs["t"].kind is float
    assert specs["t"].step == pytest.approx(0.01)
    assert specs["r"].step == 1 and specs["r"].kind is int
    assert specs["on"].kind is bool and specs["on"].description == "a switch"


def test_params_from_dict_validates():
    p = params_from_dict(P, {"t": 0.25, "r": 4.0, "on": False})
    assert params_to_dict(p) == {"t": 0.25, "r": 4, "on": False}
    assert isinstance(p.r, int)
    for bad, msg in [({"t": 2}, "outside its range"), ({"x": 1}, "unknown parameter 'x'"),
                     ({"r": 1.5}, "whole number"), ({"t": float("nan")}, "NaN"), ({"t": "a"}, "a number"),
                     ({"on": 3}, "true or false")]:
        with pytest.raises(ParamsError, match=msg):
            params_from_dict(P, bad)


def test_params_from_dict_starts_from_base():
    base = P(t=0.9, r=1, on=False)
    assert params_from_dict(P, {"r": 2}, base) == P(t=0.9, r=2, on=False)


def test_run_drives_generator_and_returns_value():
    def work():
        for i in range(3):
            yield Progress(i + 1, 3, "step")
        return "result"

    seen = []
    assert run(work(), seen.append) == "result"
    assert [p.done for p in seen] == [1, 2, 3] and seen[-1].fraction == 1.0


def test_cancel_token():
    token = CancelToken()
    token.check()
    token.cancel()
    assert token.cancelled
    with pytest.raises(Cancelled):
        token.check()
