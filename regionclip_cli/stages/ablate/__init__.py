"""`ablate`: one base recipe, a set of overrides, one run per variant and seed, one comparison."""

from regionclip_cli.stages.ablate.run import AblateConfig, AblationResult, run

__all__ = ["AblateConfig", "AblationResult", "run"]
