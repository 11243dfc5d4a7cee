"""One training engine for every task (pretrain now, finetune next).

    task.py         the Task protocol a stage implements, and the Runtime it runs in
    loop.py         Trainer: optimiser, lr, precision, clipping, prefetch, checkpoints, stop signal
    config.py       the engine's recipe sections: OptimizerConfig, TrainConfig
    optim.py        optimiser + warmup/multi-step lr schedule from the optimizer section
    distributed.py  DistributedContext: torchrun's process group, device-side collectives
    checkpoints.py  atomic training-state checkpoints (weights_only loadable)
    runs.py         the run folder: fresh/overwrite/resume rules, metrics JSONL
    progress.py     a bar on a terminal, plain lines elsewhere
    stop.py         SIGINT/SIGTERM -> checkpoint and stop
    recipe.py       typed YAML recipes (checked before any work starts)
"""
