"""Pseudo labels: the frozen teacher's best concept per proposed region, `run(PseudoLabelConfig(...))`."""

from regionclip_cli.stages.pseudolabel.stage import (PseudoLabelConfig, PseudoLabelInterrupted, PseudoLabelResult,
                                                    Reporter, run)

__all__ = ["PseudoLabelConfig", "PseudoLabelInterrupted", "PseudoLabelResult", "Reporter", "run"]
