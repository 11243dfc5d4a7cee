"""The pipeline, one package per stage, in order: concepts -> pseudolabel -> pretrain -> (finetune) -> zeroshot -> (evaluate)."""
