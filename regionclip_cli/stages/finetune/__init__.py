"""Open-vocabulary detector finetuning (`regionclip finetune`): the engine's second task."""
