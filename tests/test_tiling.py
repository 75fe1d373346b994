"""Chip grid, blend weights, the row-streaming stitcher and the read-ahead thread."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from rasterio.windows import Window

from fiacli.core.errors import UsageError
from fiacli.geo.tiling import ChipGrid, ChipReader, RowStitcher, axis_offsets, axis_weights

CASES = [(1, 64, 16), (63, 64, 16), (64, 64, 16), (65, 64, 16), (200, 64, 0), (211, 64, 30),
         (480, 48, 47), (1000, 480, 96), (97, 32, 8)]  # fmt: skip


@pytest.mark.parametrize(("length", "chip", "overlap"), CASES)
def test_offsets_cover_the_axis_and_stay_inside(length, chip, overlap):
    o = axis_offsets(length, chip, overlap)
    assert o[0] == 0
    if length <= chip:
        assert list(o) == [0]
        return
    assert o[-1] + chip == length  # the last chip ends exactly on the edge, no padding
    assert (o >= 0).all() and (o + chip <= length).all()
    steps = np.diff(o)
    assert (steps[:-1] == chip - overlap).all() and 0 < steps[-1] <= chip - overlap
    covered = np.zeros(length, int)
    for x in o:
        covered[x : x + chip] += 1
    assert (covered >= 1).all()


@pytest.mark.parametrize(("length", "chip", "overlap"), CASES)
@pytest.mark.parametrize("blend", ["cosine", "crop", "none"])
def test_weights_sum_to_one_everywhere(length, chip, overlap, blend):
    o = axis_offsets(length, chip, overlap)
    ws = axis_weights(length, chip, o, blend)
    total = np.zeros(length)
    for x, w in zip(o, ws, strict=True):
        assert len(w) == min(chip, length) and (w >= 0).all()
        total[x : x + len(w)] += w
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-6)
    if blend == "crop":  # a partition: each pixel belongs to exactly one chip
        stacked = np.zeros(length, int)
        for x, w in zip(o, ws, strict=True):
            stacked[x : x + len(w)] += w > 0
        assert (stacked == 1).all()


def test_cosine_fades_out_chip_borders_but_not_scene_edges():
    o = axis_offsets(300, 100, 40)
    ws = axis_weights(300, 100, o, "cosine")
    first, middle = ws[0], ws[1]
    assert first[0] == pytest.approx(1.0)  # scene edge: full weight
    assert middle[0] < 0.01 and middle[50] == pytest.approx(1.0)  # chip border: faded
    assert np.abs(np.diff(middle)).max() < 0.06  # smooth: no seam


def test_grid_refuses_bad_sizes():
    with pytest.raises(UsageError, match="overlap"):
        ChipGrid(100, 100, 64, 64)
    with pytest.raises(UsageError, match="at least 16"):
        ChipGrid(100, 100, 8, 0)


def _stitch(grid: ChipGrid, blend: str, predict, valid_fn=None):
    """Run the stitcher over a grid; returns the assembled scene and the emitted row ranges."""
    st = RowStitcher(grid, 1, blend)
    out = np.full((grid.height, grid.width), -1.0, np.float32)
    spans = []
    for chip in grid:
        valid = np.ones((chip.height, chip.width), bool) if valid_fn is None else valid_fn(chip)
        probs = None if not valid.any() else predict(chip)[None]
        ready = st.add(chip, probs, valid)
        if ready is not None:
            y0, rows = ready
            spans.append((y0, y0 + rows.shape[1]))
            out[y0 : y0 + rows.shape[1]] = rows[0]
        assert st.acc.shape[1] <= grid.chip  # never more than one chip row of the scene
    return out, spans


SCENES = [(70, 90, 32, 8), (33, 100, 32, 31), (20, 10, 32, 8), (129, 64, 64, 0)]


@pytest.mark.parametrize(("h", "w", "chip", "overlap"), SCENES)
def test_stitcher_emits_every_row_once_in_order(h, w, chip, overlap):
    grid = ChipGrid(h, w, chip, overlap)
    out, spans = _stitch(grid, "cosine", lambda c: np.full((c.height, c.width), 0.25, np.float32))
    assert spans[0][0] == 0 and spans[-1][1] == h
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_none_blend_is_the_mean_of_the_chips_covering_a_pixel():
    grid = ChipGrid(70, 90, 32, 12)
    rng = np.random.default_rng(1)
    preds = {(c.row, c.col): rng.random((c.height, c.width)).astype(np.float32) for c in grid}
    out, _ = _stitch(grid, "none", lambda c: preds[(c.row, c.col)])
    total = np.zeros((70, 90))
    count = np.zeros((70, 90))
    for c in grid:
        total[c.y : c.y + c.height, c.x : c.x + c.width] += preds[(c.row, c.col)]
        count[c.y : c.y + c.height, c.x : c.x + c.width] += 1
    np.testing.assert_allclose(out, total / count, atol=1e-5)


def test_crop_blend_takes_each_pixel_from_the_chip_with_the_nearest_centre():
    grid = ChipGrid(70, 90, 32, 12)
    rng = np.random.default_rng(2)
    preds = {(c.row, c.col): rng.random((c.height, c.width)).astype(np.float32) for c in grid}
    out, _ = _stitch(grid, "crop", lambda c: preds[(c.row, c.col)])
    chips = list(grid)
    for y in range(70):
        for x in range(90):
            inside = [c for c in chips if c.y <= y < c.y + 32 and c.x <= x < c.x + 32]
            best = min(inside, key=lambda c: abs(c.y + 16 - (y + 0.5)) + abs(c.x + 16 - (x + 0.5)))
            assert out[y, x] == preds[(best.row, best.col)][y - best.y, x - best.x]


def test_invalid_pixels_and_skipped_chips_are_nan():
    grid = ChipGrid(64, 64, 32, 8)
    nodata = np.zeros((64, 64), bool)
    nodata[:5] = True  # a nodata strip
    nodata[:32, :32] = True  # chip (0, 0) holds no data at all: it is skipped

    def valid_fn(chip):
        return ~nodata[chip.y : chip.y + chip.height, chip.x : chip.x + chip.width]

    predicted = []

    def predict(chip):
        predicted.append((chip.row, chip.col))
        return np.full((chip.height, chip.width), 0.7, np.float32)

    out, _ = _stitch(grid, "cosine", predict, valid_fn)
    assert (0, 0) not in predicted
    assert np.array_equal(np.isnan(out), nodata)
    np.testing.assert_allclose(out[~nodata], 0.7, atol=1e-6)


def test_chips_out_of_order_are_refused():
    grid = ChipGrid(64, 64, 32, 8)
    st = RowStitcher(grid, 1)
    chips = list(grid)
    with pytest.raises(ValueError, match="out of order"):
        st.add(chips[1], None, np.zeros((32, 32), bool))


class _FakeScene:
    def __init__(self, h, w, fail_at=None, nodata_first_col=True):
        self.h, self.w, self.fail_at, self.reads = h, w, fail_at, []
        self.nodata_first_col = nodata_first_col

    def read(self, window: Window):
        self.reads.append(window)
        if self.fail_at is not None and len(self.reads) > self.fail_at:
            raise OSError("read failed")
        h, w = int(window.height), int(window.width)
        rgb = np.full((3, h, w), 7, np.uint8)
        columns = np.arange(int(window.col_off), int(window.col_off) + w)
        # nodata in the first 32 columns: exactly the first chip column of a 32-px grid
        valid = np.broadcast_to(columns >= 32 if self.nodata_first_col else True, (h, w))
        return rgb, valid


def test_reader_batches_valid_chips_in_order_and_pads_small_scenes():
    grid = ChipGrid(40, 100, 32, 8)
    scene = _FakeScene(40, 100)
    with ChipReader(scene, grid, batch_size=3) as reader:
        batches = list(reader)
    chips = [c for b in batches for c in b.chips]
    assert [(c.row, c.col) for c in chips] == [(c.row, c.col) for c in grid]
    assert all(len(b.pixels) <= 3 for b in batches)
    slots = [s for b in batches for s in b.slot]
    assert [s < 0 for s in slots] == [c.col == 0 for c in grid]
    rows = sorted({(c.y, c.height) for c in grid})  # a narrow scene: one read per chip row
    assert [(w.row_off, w.height, w.col_off, w.width) for w in scene.reads] == [
        (y, h, 0, 100) for y, h in rows
    ]
    small = ChipGrid(20, 10, 32, 8)
    with ChipReader(_FakeScene(20, 10, nodata_first_col=False), small, batch_size=2) as reader:
        (batch,) = list(reader)
    assert batch.pixels.shape == (1, 3, 32, 32)
    assert (batch.pixels[0, :, :20, :10] == 7).all() and (batch.pixels[0, :, 20:, :] != 7).all()


def test_reader_reads_a_few_chips_at_a_time_on_wide_scenes():
    from fiacli.geo.tiling import READ_CHIPS

    grid = ChipGrid(32, 1000, 32, 8)  # one row: 41 chips 24 px apart + the edge chip
    scene = _FakeScene(32, 1000, nodata_first_col=False)
    with ChipReader(scene, grid, batch_size=5) as reader:
        chips = [c for b in reader for c in b.chips]
    assert len(chips) == len(grid) == 42
    assert len(scene.reads) == -(-42 // READ_CHIPS)  # each read serves READ_CHIPS chips
    assert max(w.width for w in scene.reads) <= 32 + (READ_CHIPS - 1) * 24  # bounded memory
    for c in chips:  # every chip lies inside one read
        assert any(w.col_off <= c.x and c.x + c.width <= w.col_off + w.width for w in scene.reads)


def test_reader_error_reaches_the_consumer_and_stop_does_not_hang():
    grid = ChipGrid(200, 200, 32, 8)
    with (
        pytest.raises(OSError, match="read failed"),
        ChipReader(_FakeScene(200, 200, fail_at=5), grid, batch_size=2) as reader,
    ):
        list(reader)
    scene = _FakeScene(200, 200)
    with ChipReader(scene, grid, batch_size=1, depth=1) as reader:
        next(iter(reader))
    assert not reader.thread.is_alive()  # stopped early, thread joined
    assert len(scene.reads) < len(grid)


@pytest.mark.parametrize("threads", [0, 2])
def test_reader_decodes_into_the_windows_it_gave_back(tmp_path, monkeypatch, threads):
    """Decoded windows are reused for later reads (fresh memory costs a page fault per 4 KiB),
    so few arrays serve many windows, and every chip still holds exactly the scene's pixels."""
    from _oracle import random_rgb, write_tif

    from fiacli.geo import tiling
    from fiacli.geo.raster import Scene, open_scene

    image = random_rgb(3000, 1100)
    outs: list[np.ndarray | None] = []  # held, so no two arrays can share an id
    real = Scene.read

    def spy(self, window, out=None):
        outs.append(out)
        return real(self, window, out)

    monkeypatch.setattr(tiling, "UNIT_COLUMNS", 512)  # windows of 2 x 1 tiles of 256 px
    path = write_tif(tmp_path / "s.tif", image, tiled=True)
    grid = ChipGrid(3000, 1100, 96, 16)
    with open_scene(path) as scene:
        assert scene.reads_into
        monkeypatch.setattr(Scene, "read", spy)
        with ChipReader(scene, grid, batch_size=4, threads=threads) as reader:
            for batch in reader:
                for chip, slot in zip(batch.chips, batch.slot, strict=True):
                    y, x = chip.y, chip.x
                    expect = image[:, y : y + chip.height, x : x + chip.width]
                    assert np.array_equal(batch.pixels[slot], expect)
                reader.recycle(batch)
            live = reader.plan.live
    assert all(out is not None for out in outs)  # every read had an array to decode into
    assert len(outs) == len(reader.plan.units) > 3 * (live + 6)
    shapes = {out.shape for out in outs}
    # those in memory at once, and up to two spares of each shape
    assert len({id(out) for out in outs}) <= live + 2 * len(shapes)
