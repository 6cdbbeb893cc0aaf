"""Online part: shards -> masking -> model -> DeepSpeed engine -> checkpoints, metrics, export, finetune."""
