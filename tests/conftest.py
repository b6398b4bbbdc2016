"""GUI test fixtures (napari viewers, tiny models). Kept light: nothing here imports napari, Qt or
torch at import time, so the core tests stay fast and GUI-free."""
from __future__ import annotations

import signal
import sys

import numpy as np
import pytest


def pytest_configure(config):
    """Ctrl-C tests need SIGINT delivered: a suite started in the background (``make test &``,
    ``nohup``) inherits SIGINT *ignored*, and so would every CLI subprocess it starts."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny models: one torch thread is faster than two contended ones on a 2-core CI
    machine. Only applies where the test module already imported torch (GUI tests must not)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated_user_state(tmp_path_factory, monkeypatch):
    """No test reads or writes the real user settings or finds real bundled models."""
    monkeypatch.setenv("NAPARI_TEXTDIFF_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
    monkeypatch.setenv("NAPARI_TEXTDIFF_MODELS", str(tmp_path_factory.mktemp("no_models")))


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


# -- a protocol-conforming fake model (for failure injection and exact, instant outputs) --------
class FakeModel:
    """Implements the SegmentationModel protocol with a single weight ``w``.

    ``predict_proba`` = the image's first channel times ``w`` clipped to [0, 1]; fine-tuning moves
    ``w`` towards 1 (loss = (1 - w)^2) and may be told to fail after ``fail_after`` steps.
    """

    kind = "fake"
    uses_text = True
    fail_after = None            # class-level switch for failure tests
    step_delay = 0.0

    def __init__(self, w=0.5, channels=1):
        self.w = float(w)
        self.channels = channels
        self.texts = []

    def predict_proba(self, image, text=None, *, tiled=True, device=None):
        self.texts.append(text)
        return np.clip(np.asarray(image, np.float32)[..., 0] * self.w, 0, 1)

    def finetune(self, examples, *, epochs=20, lr=1e-4, should_stop=None, **kw):
        import time

        from napari_textdiff.core.progress import Progress

        total = epochs * len(examples)
        step = 0
        for e in range(epochs):
            for _ex in examples:
                if should_stop is not None and should_stop():
                    return step
                if FakeModel.fail_after is not None and step >= FakeModel.fail_after:
                    self.w = -99.0          # a half-updated, broken model
                    raise RuntimeError("simulated out-of-memory during fine-tuning")
                self.w += lr * 2 * (1 - self.w)
                step += 1
                time.sleep(self.step_delay)
                yield Progress("finetune", step=step, total=total, epoch=e + 1,
                               loss=(1 - self.w) ** 2, metrics={"val_dice": self.w})
        return step

    def save(self, path):
        import torch

        from napari_textdiff.core.bundle import save_bundle

        return save_bundle(path, self.kind, {"w": torch.tensor([self.w])},
                           {"channels": self.channels})

    @classmethod
    def load(cls, path, device="auto"):
        from napari_textdiff.core.bundle import load_bundle

        header, state = load_bundle(path, expect_kind=cls.kind)
        return cls(float(state["w"][0]), header["config"]["channels"])


@pytest.fixture
def fake_model_path(tmp_path, monkeypatch):
    """A saved FakeModel bundle, loadable through ``core.models.load_model``."""
    from napari_textdiff.core import models

    monkeypatch.setitem(models.MODEL_KINDS, "fake", "conftest:FakeModel")
    monkeypatch.setattr(FakeModel, "fail_after", None)
    p = tmp_path / "fake.safetensors"
    FakeModel(0.5).save(p)
    return p


@pytest.fixture
def tiny_mgcc_path(tmp_path):
    """A real, randomly initialised MGCC model with a few thousand weights (32 px input)."""
    import torch

    from napari_textdiff.core.mgcc.model import MGCCModel

    torch.manual_seed(0)
    m = MGCCModel.create(in_channels=1, width=1 / 16, size=32)
    with torch.no_grad():   # spread the untrained output over (0, 1) so thresholds matter
        m.net.main_decoder.head.weight.mul_(60.0)
    p = tmp_path / "tiny_mgcc.safetensors"
    m.save(p)
    return p


def blob_image(h=48, w=48, centers=((14, 14), (34, 32)), r=7, rgb=False, seed=0):
    """A gray (or RGB) uint8 image with bright discs on a noisy dark background, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), bool)
    for cy, cx in centers:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img = np.where(mask, 200, 40) + rng.integers(0, 20, (h, w))
    img = img.astype(np.uint8)
    if rgb:
        img = np.repeat(img[..., None], 3, axis=-1)
    return img, mask.astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_textdiff_path(tmp_path_factory):
    """A real TextDiff model: random tiny diffusion UNet + tiny BERT, untrained 16-d head."""
    from napari_textdiff.core.textdiff.config import TextDiffConfig
    from napari_textdiff.core.textdiff.model import TextDiffModel
    from textdiff_testkit import make_tiny_backbone, make_tiny_bert

    root = tmp_path_factory.mktemp("tiny_textdiff")
    cfg = TextDiffConfig(working_size=32, tile_overlap=8, dim=16, heads=2, decoder=[16, 8],
                         epochs=2, lr=3e-3, batch_size=2, steps=[10, 50], max_length=12)
    m = TextDiffModel.create(cfg, backbone=str(make_tiny_backbone(root / "bb")),
                             text_encoder=str(make_tiny_bert(root / "bert")), device="cpu")
    p = root / "tiny_textdiff.safetensors"
    m.save(p)
    return p


class SlowTiledModel(FakeModel):
    """A FakeModel that streams ``tiles`` tile events, ``tile_delay`` seconds each, and honours
    Stop between tiles like the real models (for Stop and close-during-job tests)."""

    kind = "slowfake"
    tiles = 3
    tile_delay = 0.0

    def iter_proba(self, image, text=None, *, tiled=True, device=None, should_stop=None,
                   name=""):
        import time

        from napari_textdiff.core.progress import Progress

        for i in range(self.tiles):
            if should_stop is not None and should_stop():
                return None
            time.sleep(self.tile_delay)
            yield Progress("predict", i + 1, self.tiles, message=name)
        return self.predict_proba(image, text)


@pytest.fixture
def slow_model_path(tmp_path, monkeypatch):
    """A saved SlowTiledModel bundle (set ``SlowTiledModel.tiles`` / ``tile_delay`` per test)."""
    from napari_textdiff.core import models

    monkeypatch.setitem(models.MODEL_KINDS, "slowfake", "conftest:SlowTiledModel")
    monkeypatch.setattr(SlowTiledModel, "tiles", 3)
    monkeypatch.setattr(SlowTiledModel, "tile_delay", 0.0)
    p = tmp_path / "slow.safetensors"
    SlowTiledModel(0.5).save(p)
    return p


@pytest.fixture
def modality_models(tmp_path, monkeypatch):
    """Tiny real MGCC models as the bundled model of each modality, each with its own stored
    threshold (histology 0.55, X-ray 0.8, ultrasound 0.5), found through NAPARI_TEXTDIFF_MODELS."""
    import torch

    from napari_textdiff.core.mgcc.model import MGCCModel

    n = torch.get_num_threads()
    torch.set_num_threads(1)            # worker threads too: tiny models, a loaded 2-core CPU
    d = tmp_path / "bundled"
    d.mkdir()
    for name, ch, thr, seed in (("histology.safetensors", 3, 0.55, 0),
                                ("xray.safetensors", 1, 0.8, 1),
                                ("ultrasound_mgcc.safetensors", 1, 0.5, 2)):
        torch.manual_seed(seed)
        m = MGCCModel.create(in_channels=ch, width=1 / 16, size=32, threshold=thr)
        with torch.no_grad():
            m.net.main_decoder.head.weight.mul_(60.0)
        m.save(d / name)
    monkeypatch.setenv("NAPARI_TEXTDIFF_MODELS", str(d))
    yield d
    torch.set_num_threads(n)
