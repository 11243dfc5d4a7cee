"""Stage 3: region-level language-image pretraining of a student CLIP.

    recipe.py   PretrainConfig: every setting, typed (its optimizer/train sections are the engine's)
    runner.py   check(recipe) and run(recipe, resume=..., overwrite=..., progress=...)
    task.py     PretrainTask (the engine task: teacher, student, losses) and the loss groups
    batches.py  this process's images of the global batch, deterministic per iteration
    student.py  the student tower: frozen BN and stages, export as a whole CLIP
"""

from regionclip_cli.stages.pretrain.runner import check, run

__all__ = ["check", "run"]
