"""Evaluate a detections file against a COCO or LVIS ground truth (the `regionclip evaluate` stage)."""

from regionclip_cli.stages.evaluate.run import EvaluateConfig, EvaluationReport, run

__all__ = ["EvaluateConfig", "EvaluationReport", "run"]
