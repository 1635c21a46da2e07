"""The label maps are exactly those of cityscapesscripts (Cityscapes, GTA5) and DAFormer (SYNTHIA)."""

import numpy as np
from cityscapesscripts.helpers import labels as reference

from cicld.data import labels


def test_cityscapes_label_table_matches_cityscapesscripts():
    ours = [(lab.name, lab.id, lab.train_id, lab.color) for lab in labels.CITYSCAPES_LABELS]
    theirs = [(lab.name, lab.id, lab.trainId, lab.color) for lab in reference.labels]
    assert ours == theirs


def test_the_19_classes_are_named_and_coloured_as_cityscapesscripts_train_ids():
    assert labels.NUM_CLASSES == 19
    for train_id in range(19):
        assert labels.CLASSES[train_id] == reference.trainId2label[train_id].name
        assert labels.PALETTE[train_id] == reference.trainId2label[train_id].color


def test_every_label_id_maps_to_the_cityscapesscripts_train_id_or_ignore():
    ids = np.arange(256)
    expected = np.array(
        [reference.id2label[i].trainId if i in reference.id2label else 255 for i in ids], dtype=np.int64
    )
    expected[(expected < 0) | (expected > 18)] = 255
    np.testing.assert_array_equal(labels.cityscapes_ids_to_train_ids(ids), expected)


def test_train_ids_map_back_to_their_label_ids_and_ignore_to_unlabeled():
    train_ids = np.array([*range(19), 255])
    label_ids = labels.train_ids_to_cityscapes_ids(train_ids)
    assert list(label_ids[:19]) == [reference.trainId2label[t].id for t in range(19)]
    assert label_ids[19] == 0
    np.testing.assert_array_equal(labels.cityscapes_ids_to_train_ids(label_ids[:19]), np.arange(19))


def test_synthia_ids_map_as_in_the_design_table():
    # DESIGN.md §2: the 16 classes SYNTHIA->Cityscapes evaluates.
    design_table = {
        3: 0,
        4: 1,
        2: 2,
        21: 3,
        5: 4,
        7: 5,
        15: 6,
        9: 7,
        6: 8,
        1: 10,
        10: 11,
        17: 12,
        8: 13,
        19: 15,
        12: 17,
        11: 18,
    }
    for synthia_id, train_id in design_table.items():
        assert labels.synthia_ids_to_train_ids(np.array([synthia_id]))[0] == train_id


def test_synthia_void_parking_roadwork_and_lane_marking_are_ignored():
    assert list(labels.synthia_ids_to_train_ids(np.array([0, 13, 14, 22, 23, 300, 65535]))) == [255] * 7


def test_synthia_terrain_truck_train_follow_daformer_so_prepared_files_are_identical():
    assert list(labels.synthia_ids_to_train_ids(np.array([16, 18, 20]))) == [9, 14, 16]


def test_miou16_drops_terrain_truck_train_and_miou13_also_wall_fence_pole():
    names16 = {labels.CLASSES[c] for c in labels.MIOU16_CLASSES}
    names13 = {labels.CLASSES[c] for c in labels.MIOU13_CLASSES}
    assert len(names16) == 16 and set(labels.CLASSES) - names16 == {"terrain", "truck", "train"}
    assert len(names13) == 13 and names16 - names13 == {"wall", "fence", "pole"}


def test_colorize_paints_official_colours_and_ignore_black():
    image = labels.colorize(np.array([[0, 13, 255]]))
    assert image.shape == (1, 3, 3) and image.dtype == np.uint8
    assert [tuple(p) for p in image[0]] == [(128, 64, 128), (0, 0, 142), (0, 0, 0)]


def test_gta5_palette_gives_each_label_id_its_cityscapes_colour():
    palette = labels.cityscapes_id_palette()
    assert len(palette) == 768
    for lab in reference.labels:
        if lab.id >= 0:
            assert tuple(palette[3 * lab.id : 3 * lab.id + 3]) == lab.color
