"""Every config read back from a file the same way: unknown keys ignored, tuples restored."""
import pytest

from napari_textdiff.core.mgcc.network import MGCCConfig
from napari_textdiff.core.mgcc.trainer import TrainConfig
from napari_textdiff.core.textdiff.config import TextDiffConfig


@pytest.mark.parametrize("cfg", [MGCCConfig(depths=(2, 4, 6), width=0.5),
                                 TrainConfig(iterations=7, schedule="cosine"),
                                 TextDiffConfig(dim=32, steps=[10, 20])])
def test_round_trip_ignores_keys_a_newer_version_added(cfg):
    d = cfg.to_dict()
    assert all(not isinstance(v, tuple) for v in d.values())       # JSON-ready
    back = type(cfg).from_dict({**d, "added_in_a_later_version": 1})
    assert back == cfg


def test_missing_keys_take_defaults_and_lists_become_the_declared_tuples():
    c = MGCCConfig.from_dict({"depths": [1, 2, 3]})
    assert c.depths == (1, 2, 3) and c.width == MGCCConfig().width
