"""Binary <-> instance conversions: touching objects are split, sizes and ids are sane."""
import numpy as np

from napari_textdiff.core.instances import (binary_to_instances, instances_to_binary,
                                            relabel_sequential)


def _discs(centres, r, shape=(64, 96)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    m = np.zeros(shape, bool)
    for cy, cx in centres:
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return m


def test_two_touching_discs_become_two_objects():
    m = _discs([(32, 30), (32, 56)], 14)          # overlapping by 2 px: one component
    from scipy import ndimage as ndi
    assert ndi.label(m)[1] == 1
    lab = binary_to_instances(m.astype(np.uint8))
    assert lab.dtype == np.int32
    assert set(np.unique(lab)) == {0, 1, 2}
    # each object holds (about) one disc and sits on its own centre
    assert lab[32, 30] != lab[32, 56]
    sizes = np.bincount(lab.ravel())[1:]
    area = np.pi * 14 ** 2
    assert np.all(np.abs(sizes - area) < 0.15 * area)
    # the union is preserved
    np.testing.assert_array_equal(instances_to_binary(lab), m.astype(np.uint8))


def test_single_disc_small_specks_and_empty():
    m = _discs([(20, 20)], 10)
    m[50, 80] = True                              # one-pixel speck
    lab = binary_to_instances(m, min_size=10)
    assert lab.max() == 1 and lab[50, 80] == 0 and lab[20, 20] == 1
    lab = binary_to_instances(m, min_size=1)
    assert lab.max() == 2 and lab[50, 80] > 0     # kept when small objects are allowed
    assert binary_to_instances(np.zeros((8, 8))).max() == 0
    # probability maps are thresholded
    assert binary_to_instances(m * 0.8, min_size=10).max() == 1


def test_thin_objects_without_a_clear_peak_still_get_an_id():
    m = np.zeros((20, 40), bool)
    m[5, 2:30] = True                              # a 1-px line: flat distance plateau
    m[12:14, 5:35] = True
    lab = binary_to_instances(m, min_size=1, min_distance=50)
    assert lab[5, 10] > 0 and lab[12, 10] > 0 and lab[5, 10] != lab[12, 10]
    assert (lab > 0).sum() == m.sum()


def test_relabel_sequential():
    lab = np.array([[0, 7, 7], [3, 0, 100]])
    out = relabel_sequential(lab)
    assert out.dtype == np.int32
    assert sorted(np.unique(out)) == [0, 1, 2, 3]
    # same partition
    for a in np.unique(lab):
        assert len(np.unique(out[lab == a])) == 1
