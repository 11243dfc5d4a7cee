"""Zero-shot region recognition: `run(ZeroShotConfig(...))`, and `detect(...)` for in-memory use."""

from regionclip_cli.stages.zeroshot.stage import (ImageResult, Reporter, ZeroShotConfig, ZeroShotInterrupted,
                                                  ZeroShotResult, run)

__all__ = ["ImageResult", "Reporter", "ZeroShotConfig", "ZeroShotInterrupted", "ZeroShotResult", "run"]
