"""One dataset image as a :class:`Sample` (nothing decoded yet), and the file helpers every
layout reader shares (case-insensitive lookup, spreadsheets and CSV tables)."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import io

__all__ = ["Sample", "images_in", "existing_dir", "child", "read_table", "column"]


@dataclasses.dataclass
class Sample:
    """One image of a dataset, with its mask source and description; nothing loaded yet.

    The mask comes from ``mask_loader`` when set (layouts that compose masks, e.g. X-ray) or
    else from the union of ``mask_paths``; a sample with neither is unlabeled.
    """

    name: str
    image_path: Path
    mask_paths: tuple[Path, ...] = ()
    text: str = ""
    meta: dict = dataclasses.field(default_factory=dict)
    mask_loader: Callable[[], np.ndarray] | None = dataclasses.field(default=None, repr=False)

    @property
    def has_mask(self) -> bool:
        return self.mask_loader is not None or bool(self.mask_paths)

    def load_image(self, channels: int | None = None) -> np.ndarray:
        """float32 (H, W, C) in [0, 1] (see :func:`io.normalize_image`)."""
        return io.load_image(self.image_path, channels=channels)

    def load_mask(self) -> np.ndarray:
        """Binary uint8 (H, W) mask, checked against the image's size."""
        if not self.has_mask:
            raise ValueError(f"{self.name}: this sample has no mask (unlabeled image "
                             f"{Path(self.image_path).name})")
        shape = io.image_shape(self.image_path)
        if self.mask_loader is not None:
            mask = np.asarray(self.mask_loader(), dtype=np.uint8)
            io.check_same_shape(shape, mask.shape, self.image_path, f"{self.name} (composed mask)")
            return mask
        mask = None
        for mp in self.mask_paths:
            m = io.read_mask(mp)
            io.check_same_shape(shape, m.shape, self.image_path, mp)
            mask = m if mask is None else np.maximum(mask, m)
        return mask

    def load(self, channels: int | None = None):
        """The training triple as :class:`core.models.Example`."""
        from ..models import Example

        image = self.load_image(channels=channels)
        mask = self.load_mask()
        io.check_same_shape(image, mask, self.image_path, self.mask_paths[0]
                            if self.mask_paths else self.name)
        return Example(image=image, mask=mask, text=self.text, name=self.name)



def images_in(folder: Path) -> list[Path]:
    """The image files of a folder, sorted by name."""
    return sorted((p for p in folder.iterdir() if io.is_image_file(p)), key=lambda p: p.name)


def existing_dir(path, what: str) -> Path:
    """``path`` as a Path; a clear error naming ``what`` when it is missing or a file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what}: folder not found: {p}")
    if not p.is_dir():
        raise NotADirectoryError(f"{what}: not a folder: {p}")
    return p


def child(folder: Path, name: str) -> Path | None:
    """Case-insensitive child lookup."""
    exact = folder / name
    if exact.exists():
        return exact
    for c in folder.iterdir():
        if c.name.lower() == name.lower():
            return c
    return None


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a .xlsx (first sheet) or .csv file as dicts keyed by the header row."""
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        import openpyxl
        try:
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as e:
            raise ValueError(f"{path}: cannot read spreadsheet ({e})") from e
        rows = list(wb.worksheets[0].iter_rows(values_only=True))
        wb.close()
    else:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    if not rows:
        return []
    header = [str(h).strip() if h is not None else "" for h in rows[0]]
    return [{h: ("" if v is None else str(v).strip()) for h, v in zip(header, r)}
            for r in rows[1:] if any(v not in (None, "") for v in r)]


def column(row: dict, *names: str) -> str:
    """The first of ``names`` present in ``row`` (case-insensitive), else ""."""
    low = {k.lower(): v for k, v in row.items()}
    for n in names:
        if n.lower() in low:
            return low[n.lower()]
    return ""
