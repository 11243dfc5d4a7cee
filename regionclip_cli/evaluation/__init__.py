"""Evaluation: detection AP (COCO, open-vocabulary splits, LVIS) and region top-1 accuracy."""

from regionclip_cli.evaluation.api import check_vocabulary, evaluate_detections, read_detections
from regionclip_cli.evaluation.coco import EvalResult, load_ground_truth

__all__ = ["EvalResult", "check_vocabulary", "evaluate_detections", "load_ground_truth", "read_detections"]
