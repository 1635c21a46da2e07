"""mIoU is computed exactly as cityscapesscripts computes it, and the 16/13-class subsets are right."""

import numpy as np
import pytest
import torch

from cicld.data.labels import (
    CLASSES,
    MIOU13_CLASSES,
    MIOU16_CLASSES,
    cityscapes_ids_to_train_ids,
    train_ids_to_cityscapes_ids,
)
from cicld.data.pngio import write_image
from cicld.evaluation.metrics import ConfusionMatrix, SegmentationScores


def _fixture(tmp_path, absent=(), seed=0):
    """Ground truth with all 19 classes (minus ``absent``) plus ignore pixels; noisy predictions."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(19) if c not in absent]
    gt_files, pred_files, pairs = [], [], []
    for i in range(3):
        gt = rng.choice(present, size=(24, 40)).astype(np.uint8)
        gt[:, :3] = 255  # ignore pixels (written as labelId 0, "unlabeled")
        gt[0, 5] = 255
        pred = gt.copy()
        noise = rng.random(gt.shape) < 0.3
        pred[noise] = rng.choice(present, size=int(noise.sum()))
        pred[gt == 255] = rng.choice(present, size=int((gt == 255).sum()))  # predictions on ignore pixels
        gt_path, pred_path = tmp_path / f"gt{i}_gtFine_labelIds.png", tmp_path / f"pred{i}.png"
        write_image(gt_path, train_ids_to_cityscapes_ids(gt).astype(np.uint8))
        write_image(pred_path, train_ids_to_cityscapes_ids(pred).astype(np.uint8))
        gt_files.append(str(gt_path))
        pred_files.append(str(pred_path))
        pairs.append((pred, gt))
    return gt_files, pred_files, pairs


def _cityscapesscripts(gt_files, pred_files, tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as reference

    reference.args.evalInstLevelScore = False
    reference.args.quiet = True
    reference.args.JSONOutput = False
    reference.args.exportFile = str(tmp_path / "reference.json")
    return reference.evaluateImgLists(pred_files, gt_files, reference.args)


def _ours(pairs):
    matrix = ConfusionMatrix()
    for pred, gt in pairs:
        # What evaluate does: predictions against labels mapped from the labelId files.
        matrix.update(
            torch.from_numpy(pred.astype(np.int64)),
            torch.from_numpy(cityscapes_ids_to_train_ids(train_ids_to_cityscapes_ids(gt)).astype(np.int64)),
        )
    return matrix.scores()


def test_miou_equals_cityscapesscripts_on_all_19_classes_with_ignore_pixels(tmp_path):
    gt_files, pred_files, pairs = _fixture(tmp_path)
    reference = _cityscapesscripts(gt_files, pred_files, tmp_path)
    ours = _ours(pairs)
    assert ours.miou19 == pytest.approx(reference["averageScoreClasses"], abs=1e-6)
    for name, iou in zip(CLASSES, ours.per_class_iou):
        assert iou == pytest.approx(reference["classScores"][name], abs=1e-6)


def test_classes_absent_from_ground_truth_and_predictions_are_excluded_like_cityscapesscripts(tmp_path):
    gt_files, pred_files, pairs = _fixture(tmp_path, absent=(14, 16), seed=1)
    reference = _cityscapesscripts(gt_files, pred_files, tmp_path)
    ours = _ours(pairs)
    assert np.isnan(ours.per_class_iou[14]) and np.isnan(ours.per_class_iou[16])
    assert np.isnan(reference["classScores"]["truck"])
    assert ours.miou19 == pytest.approx(reference["averageScoreClasses"], abs=1e-6)


def test_miou16_and_miou13_average_exactly_their_classes():
    iou = np.linspace(0.05, 0.95, 19)
    scores = SegmentationScores(iou, 1.0, np.eye(19))
    assert scores.miou16 == pytest.approx(iou[list(MIOU16_CLASSES)].mean())
    assert scores.miou13 == pytest.approx(iou[list(MIOU13_CLASSES)].mean())
    assert scores.miou19 == pytest.approx(iou.mean())


def test_ignore_pixels_count_nowhere():
    matrix = ConfusionMatrix()
    matrix.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 255, 255]]))
    assert matrix.matrix.sum() == 1 and matrix.scores().miou19 == 1.0


def test_pixel_accuracy_is_correct_pixels_over_labelled_pixels():
    matrix = ConfusionMatrix()
    matrix.update(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 255]))
    assert matrix.scores().pixel_accuracy == pytest.approx(2 / 3)
