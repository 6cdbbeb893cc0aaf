"""The pretraining stage: ``python -m pipeline.pretrain`` (entry in __main__.py, the loop in loop.py)."""
