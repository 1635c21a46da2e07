"""The toy domain pair: real on-disk formats, deterministic, resumable, and two different domains."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cicld.data.labels import (
    CITYSCAPES_LABELS,
    CLASSES,
    IGNORE_INDEX,
    SYNTHIA_ID_TO_TRAINID,
    cityscapes_id_palette,
    cityscapes_ids_to_train_ids,
    synthia_ids_to_train_ids,
)
from cicld.data.pngio import read_image, read_png
from cicld.data.toy import (
    DEFAULT_NUM_SOURCE,
    DEFAULT_NUM_TARGET_TRAIN,
    DEFAULT_NUM_TARGET_VAL,
    DEFAULT_SIZE,
    MANIFEST,
    ToyPairSummary,
    cityscapes_stem,
    generate_toy_pair,
    is_toy_target,
    prepare_toy_pair,
    render_frame,
    render_preview,
)
from cicld.errors import DataError

SIZE = (96, 48)
COUNTS = dict(num_source=6, num_target_train=4, num_target_val=3)


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes), the manifest left out."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST
    }


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, ToyPairSummary]:
    root = tmp_path_factory.mktemp("toy") / "toy"
    summary = generate_toy_pair(root, seed=3, size=SIZE, source_formats=("gta5", "synthia"), **COUNTS)
    return root, summary


# ---------------------------------------------------------------------------------------------
# layout and formats


def test_layout_is_gta5_synthia_and_cityscapes_with_their_file_names(pair):
    root, _ = pair
    expected = set()
    for i in range(6):
        expected |= {f"gta5/images/{i:05d}.png", f"gta5/labels/{i:05d}.png"}
        expected |= {f"synthia/RGB/{i:07d}.png", f"synthia/GT/LABELS/{i:07d}.png"}
    for split, count in (("train", 4), ("val", 3)):
        for i in range(count):
            stem = cityscapes_stem(split, i)
            city = stem.split("_")[0]
            expected |= {
                f"cityscapes/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
                f"cityscapes/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png",
            }
    assert set(files_of(root)) == expected
    assert (root / MANIFEST).is_file()


def test_cityscapes_names_alternate_train_cities_and_keep_val_in_a_city_of_its_own():
    assert [cityscapes_stem("train", i) for i in range(4)] == [
        "toyburg_000000_000019",
        "toyville_000000_000019",
        "toyburg_000001_000019",
        "toyville_000001_000019",
    ]
    assert cityscapes_stem("val", 7) == "toyhaven_000007_000019"


def test_images_are_8bit_rgb_of_the_requested_size(pair):
    root, _ = pair
    for path in [
        *root.glob("gta5/images/*.png"),
        *root.glob("synthia/RGB/*.png"),
        *root.glob("cityscapes/leftImg8bit/*/*/*.png"),
    ]:
        with Image.open(path) as image:
            assert (image.mode, image.size) == ("RGB", SIZE), path


def test_gta5_labels_are_palette_pngs_whose_indices_are_cityscapes_label_ids(pair):
    root, _ = pair
    label_ids = {lab.id for lab in CITYSCAPES_LABELS if lab.id >= 0}
    for path in sorted(root.glob("gta5/labels/*.png")):
        with Image.open(path) as image:
            assert image.mode == "P"
            assert image.getpalette()[: 3 * 34] == cityscapes_id_palette()[: 3 * 34]
        indices = read_image(path)
        assert indices.dtype == np.uint8 and indices.shape == SIZE[::-1]
        assert set(np.unique(indices)) <= label_ids
        assert 7 in indices  # road as its label id (its trainId would be 0)


def test_synthia_labels_are_16bit_rgb_with_class_in_red_and_instance_in_green(pair):
    root, _ = pair
    synthia_ids = set(SYNTHIA_ID_TO_TRAINID) | {0}
    for i in range(6):
        path = root / "synthia" / "GT" / "LABELS" / f"{i:07d}.png"
        blob = path.read_bytes()
        assert (blob[24], blob[25]) == (16, 2)  # IHDR: bit depth 16, colour type 2 (RGB)
        label = read_png(path)
        assert label.dtype == np.uint16 and label.shape == (*SIZE[::-1], 3)
        red, green, blue = label[..., 0], label[..., 1], label[..., 2]
        assert set(np.unique(red)) <= synthia_ids
        assert not blue.any()
        # the same scene as the GTA5 copy: same image bytes, same classes
        gta5 = cityscapes_ids_to_train_ids(read_image(root / "gta5" / "labels" / f"{i:05d}.png"))
        np.testing.assert_array_equal(synthia_ids_to_train_ids(red), gta5)
        assert (root / "synthia" / "RGB" / f"{i:07d}.png").read_bytes() == (
            root / "gta5" / "images" / f"{i:05d}.png"
        ).read_bytes()
        # instance ids on things (person ... bicycle) only, one id per object
        things = (gta5 >= 11) & (gta5 <= 18)
        assert not green[~things].any()
        assert green[things].all()


def test_cityscapes_labels_are_8bit_label_id_images(pair):
    root, _ = pair
    paths = sorted(root.glob("cityscapes/gtFine/*/*/*_gtFine_labelIds.png"))
    assert len(paths) == 7
    for path in paths:
        with Image.open(path) as image:
            assert image.mode == "L"
        ids = read_image(path)
        # like real Cityscapes: the ego vehicle's hood and unlabelled pixels at the bottom
        assert set(np.unique(ids[-1])) <= {0, 1}
        assert (ids == 1).any()


def test_labels_cover_most_classes_with_realistic_frequencies():
    counts = {}
    for domain in ("source", "target"):
        train_ids = np.stack([render_frame(domain, index=i, size=(128, 64)).train_ids for i in range(12)])
        counts[domain] = np.bincount(train_ids.ravel(), minlength=256)[: len(CLASSES)]
        assert (counts[domain] > 0).sum() >= 12, [CLASSES[c] for c in np.flatnonzero(counts[domain])]
        share = counts[domain] / counts[domain].sum()
        large = {CLASSES[c] for c in np.argsort(share)[::-1][:5]}
        assert {"road", "building"} <= large
        assert share[CLASSES.index("road")] > 0.15 and share[CLASSES.index("traffic light")] < 0.02
    # both domains share the layout, with other object statistics: more persons in the target
    person = CLASSES.index("person")
    assert counts["target"][person] / counts["target"].sum() > counts["source"][person] / counts["source"].sum()


def test_non_evaluated_ids_appear_and_map_to_ignore():
    ids = np.concatenate([render_frame("target", index=i, size=(128, 64)).label_ids.ravel() for i in range(4)])
    assert {0, 1} <= set(np.unique(ids))  # unlabeled, ego vehicle
    assert (cityscapes_ids_to_train_ids(ids) == IGNORE_INDEX).any()
    static = [(render_frame("source", index=i, size=(128, 64)).label_ids == 4).any() for i in range(12)]
    assert any(static)


# ---------------------------------------------------------------------------------------------
# the two domains differ


def test_source_is_flat_and_saturated_target_is_textured_darker_and_warm():
    def stats(domain):
        grain, saturation, brightness, warmth = [], [], [], []
        for i in range(6):
            frame = render_frame(domain, index=i, size=(128, 64))
            rgb = frame.image.astype(np.float32)
            label = frame.train_ids
            # inside regions of one class (no label edge in the 3x3 neighbourhood) the Laplacian
            # sees texture and noise; its median ignores the few painted details (windows, markings)
            interior = np.ones_like(label[1:-1, 1:-1], bool)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    interior &= (
                        label[1 + dy : label.shape[0] - 1 + dy, 1 + dx : label.shape[1] - 1 + dx] == label[1:-1, 1:-1]
                    )
            lap = 4 * rgb[1:-1, 1:-1] - rgb[:-2, 1:-1] - rgb[2:, 1:-1] - rgb[1:-1, :-2] - rgb[1:-1, 2:]
            grain.append(np.median(np.abs(lap)[interior]))
            saturation.append((rgb.max(-1) - rgb.min(-1)).mean())
            brightness.append(rgb.mean())
            warmth.append((rgb[..., 0] - rgb[..., 2]).mean())
        return np.mean(grain), np.mean(saturation), np.mean(brightness), np.mean(warmth)

    source, target = stats("source"), stats("target")
    assert source[0] < 1.0 and target[0] > 8.0  # flat shading vs texture and sensor noise
    assert source[1] > 1.5 * target[1]  # saturated vs muted colours
    assert source[2] > target[2] + 10  # the target is exposed darker
    assert target[3] > source[3] + 5  # with a warm colour cast


def test_each_class_looks_different_across_domains():
    def mean_colour(domain, class_name):
        c = CLASSES.index(class_name)
        pixels = [f.image[f.train_ids == c] for f in (render_frame(domain, index=i, size=(128, 64)) for i in range(6))]
        return np.concatenate(pixels).astype(np.float32).mean(0)

    for name in ("road", "building", "vegetation", "sky", "sidewalk"):
        assert np.abs(mean_colour("source", name) - mean_colour("target", name)).max() > 15, name


# ---------------------------------------------------------------------------------------------
# determinism, workers, idempotence, resume, refusals


def test_same_seed_gives_identical_bytes_and_another_seed_other_images(tmp_path, pair):
    root, _ = pair
    again = tmp_path / "again"
    generate_toy_pair(again, seed=3, size=SIZE, source_formats=("gta5", "synthia"), **COUNTS)
    assert files_of(again) == files_of(root)
    other = tmp_path / "other"
    generate_toy_pair(other, seed=4, size=SIZE, source_formats=("gta5", "synthia"), **COUNTS)
    a, b = files_of(root), files_of(other)
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a if "images" in name or "leftImg8bit" in name)


def test_two_workers_write_the_same_files_as_one(tmp_path, pair):
    root, _ = pair
    calls = []
    summary = generate_toy_pair(
        tmp_path / "w2",
        seed=3,
        size=SIZE,
        source_formats=("gta5", "synthia"),
        workers=2,
        progress=calls.append,
        **COUNTS,
    )
    assert files_of(tmp_path / "w2") == files_of(root)
    assert calls == [13] * 13  # once per frame, with the total
    assert summary.written == 13 and summary.class_pixels == pair[1].class_pixels


def test_frames_do_not_depend_on_how_many_are_asked_for(tmp_path, pair):
    root, _ = pair
    generate_toy_pair(tmp_path / "small", seed=3, size=SIZE, num_source=2, num_target_train=1, num_target_val=1)
    small = files_of(tmp_path / "small")
    assert small and all(small[name] == files_of(root)[name] for name in small)


def test_summary_counts_every_pixel(pair):
    _, summary = pair
    assert summary.written == 13 and summary.skipped == 0
    pixels = SIZE[0] * SIZE[1]
    assert sum(summary.class_pixels["source"]) == 6 * pixels
    assert sum(summary.class_pixels["target_train"]) == 4 * pixels
    assert sum(summary.class_pixels["target_val"]) == 3 * pixels
    shares = summary.class_shares("target_val")
    assert abs(sum(shares.values()) - 1) < 1e-9 and shares["road"] > shares["pole"]
    assert "13 frames rendered" in str(summary)


def test_rerun_with_the_same_parameters_does_nothing(pair):
    root, first = pair
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    summary = generate_toy_pair(root, seed=3, size=SIZE, source_formats=("gta5", "synthia"), **COUNTS)
    assert (summary.written, summary.skipped) == (0, 13)
    assert summary.class_pixels == first.class_pixels
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == before
    assert "already complete" in str(summary)


def test_an_interrupted_run_is_resumed(tmp_path, pair):
    root = tmp_path / "toy"
    generate_toy_pair(root, seed=3, size=SIZE, source_formats=("gta5", "synthia"), **COUNTS)
    # as if killed before two frames were written and before the manifest was completed
    (root / "gta5" / "labels" / "00004.png").unlink()
    (root / "cityscapes" / "leftImg8bit" / "val" / "toyhaven" / "toyhaven_000002_000019_leftImg8bit.png").unlink()
    manifest = json.loads((root / MANIFEST).read_text())
    (root / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    summary = generate_toy_pair(root, seed=3, size=SIZE, source_formats=("gta5", "synthia"), **COUNTS)
    assert (summary.written, summary.skipped) == (2, 11)
    assert files_of(root) == files_of(pair[0])
    assert json.loads((root / MANIFEST).read_text())["complete"] is True


@pytest.mark.parametrize(
    "change, mentioned",
    [
        ({"seed": 4}, "seed 3 (asked 4)"),
        ({"size": (64, 32)}, "size [96, 48] (asked [64, 32])"),
        ({"num_source": 7}, "num_source"),
    ],
)
def test_other_parameters_in_an_existing_root_are_an_error(tmp_path, change, mentioned):
    root = tmp_path / "toy"
    params = dict(seed=3, size=SIZE, **COUNTS)
    generate_toy_pair(root, **params)
    with pytest.raises(DataError) as error:
        generate_toy_pair(root, **{**params, **change})
    message = str(error.value)
    assert mentioned in message and "another ROOT" in message and "\n" not in message
    # overwrite starts over with the new parameters
    summary = generate_toy_pair(root, **{**params, **change}, overwrite=True)
    assert summary.written == sum(v for k, v in {**params, **change}.items() if k.startswith("num_"))


def test_a_root_holding_a_real_dataset_is_never_written_into(tmp_path):
    root = tmp_path / "data"
    (root / "cityscapes" / "leftImg8bit").mkdir(parents=True)
    (root / "cityscapes" / "README").write_text("real data")
    for overwrite in (False, True):
        with pytest.raises(DataError, match="not a toy pair"):
            generate_toy_pair(root, size=SIZE, overwrite=overwrite, **COUNTS)
    assert (root / "cityscapes" / "README").read_text() == "real data"


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="format"):
        generate_toy_pair(tmp_path / "a", size=SIZE, source_formats=("kitti",), **COUNTS)
    with pytest.raises(DataError, match="too small"):
        generate_toy_pair(tmp_path / "b", size=(8, 4), **COUNTS)


def test_defaults_are_small_enough_for_a_cpu():
    assert DEFAULT_SIZE == (256, 128)
    assert DEFAULT_NUM_SOURCE * DEFAULT_SIZE[0] * DEFAULT_SIZE[1] <= 400 * 256 * 128
    assert DEFAULT_NUM_TARGET_TRAIN >= DEFAULT_NUM_TARGET_VAL > 0


def test_preview_grid_shows_images_and_coloured_labels(tmp_path, pair):
    root, _ = pair
    out = render_preview(root, tmp_path / "preview.png", count=3)
    grid = read_image(out)
    h, w = SIZE[1], SIZE[0]
    assert grid.shape == (4 * h + 3 * 4, 3 * w + 2 * 4, 3)
    # second row: the first source label in Cityscapes colours (road is purple 128,64,128)
    label_row = grid[h + 4 : 2 * h + 4, :w]
    assert (label_row == (128, 64, 128)).all(-1).any()
    assert os.path.getsize(out) > 0


def test_a_negative_seed_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(DataError, match="the toy seed must be a whole number >= 0, got -1"):
        generate_toy_pair(tmp_path / "toy", seed=-1, size=SIZE, **COUNTS)
    assert not (tmp_path / "toy").exists()


def test_prepare_toy_pair_prepares_every_dataset_the_pair_holds_and_refuses_a_damaged_one(tmp_path, pair):
    import shutil

    root = tmp_path / "toy"
    shutil.copytree(pair[0], root)
    summary = generate_toy_pair(root, seed=3, size=SIZE, source_formats=("gta5", "synthia"), **COUNTS)  # found complete
    reports = prepare_toy_pair(summary)
    assert list(reports) == ["gta5", "synthia", "cityscapes"]
    assert [reports[d].converted for d in reports] == [6, 6, 4 + 3]
    assert is_toy_target(root / "cityscapes") and not is_toy_target(root / "gta5")
    (root / "gta5" / "labels" / "00001.png").write_bytes(b"not a png")
    (root / "gta5" / "labels" / "00001_labelTrainIds.png").unlink()  # so that the frame is converted again
    with pytest.raises(DataError, match="toy gta5 data .* is damaged"):
        prepare_toy_pair(summary)


# ---------------------------------------------------------------------------------------------
# the generic world: a labelled pre-training set of neither domain


def test_generic_frames_have_random_colours_per_frame_and_both_renderings():
    frames = [render_frame("generic", index=i, size=(128, 64)) for i in range(8)]
    road = CLASSES.index("road")
    road_colours = np.stack(
        [f.image[f.train_ids == road].astype(np.float32).mean(0) for f in frames if (f.train_ids == road).any()]
    )
    assert road_colours.std(0).max() > 30  # each frame paints the road in other colours
    grain = []
    for f in frames:  # flat frames have almost no pixel-to-pixel texture, photographed ones a lot
        rgb = f.image.astype(np.float32)
        grain.append(np.median(np.abs(rgb[:, 1:] - rgb[:, :-1])))
    assert min(grain) < 2.0 and max(grain) > 4.0
    assert not np.array_equal(frames[0].image, render_frame("source", index=0, size=(128, 64)).image)
    assert set(np.unique(np.concatenate([f.train_ids.ravel() for f in frames]))) >= {0, 1, 2, 8, 10, 11, 13}


def test_generic_frames_are_written_in_the_gta5_format_and_prepared_with_the_pair(tmp_path, pair):
    import shutil

    root = tmp_path / "toy"
    shutil.copytree(pair[0], root)
    summary = generate_toy_pair(root, seed=3, size=SIZE, source_formats=("gta5", "synthia"), num_generic=5, **COUNTS)
    assert summary.written == 5 and summary.generic_root == root / "generic"
    assert sorted(p.name for p in (root / "generic" / "images").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    label = Image.open(root / "generic" / "labels" / "00002.png")
    assert label.mode == "P" and label.getpalette()[:48] == cityscapes_id_palette()[:48]
    assert sum(summary.class_pixels["generic"]) == 5 * SIZE[0] * SIZE[1]
    # the pair itself is untouched, and the generic frames are the generic world's
    assert {k: v for k, v in files_of(root).items() if not k.startswith("generic/")} == files_of(pair[0])
    assert np.array_equal(
        read_image(root / "generic" / "images" / "00002.png"), render_frame("generic", seed=3, index=2, size=SIZE).image
    )
    reports = prepare_toy_pair(summary)
    assert list(reports) == ["gta5", "synthia", "cityscapes", "generic"] and reports["generic"].converted == 5


def test_generic_frames_are_kept_when_not_asked_for_and_redone_alone_for_another_count(tmp_path, pair):
    import shutil

    root = tmp_path / "toy"
    shutil.copytree(pair[0], root)
    generate_toy_pair(root, seed=3, size=SIZE, source_formats=("gta5", "synthia"), num_generic=4, **COUNTS)
    before = files_of(root)
    again = generate_toy_pair(root, seed=3, size=SIZE, source_formats=("gta5", "synthia"), **COUNTS)  # not asked: kept
    assert again.written == 0 and again.num_generic == 4 and files_of(root) == before
    fewer = generate_toy_pair(root, seed=3, size=SIZE, source_formats=("gta5", "synthia"), num_generic=2, **COUNTS)
    assert fewer.written == 2 and fewer.num_generic == 2
    after = files_of(root)
    assert sorted(k for k in after if k.startswith("generic/images/")) == [
        "generic/images/00000.png",
        "generic/images/00001.png",
    ]
    assert after["generic/images/00001.png"] == before["generic/images/00001.png"]
    assert {k: v for k, v in after.items() if not k.startswith("generic/")} == {
        k: v for k, v in before.items() if not k.startswith("generic/")
    }
    none = generate_toy_pair(root, seed=3, size=SIZE, source_formats=("gta5", "synthia"), num_generic=0, **COUNTS)
    assert none.generic_root is None and not (root / "generic").exists()
