"""The finetune stage: ``python -m pipeline.finetune`` (entry in __main__.py, the loop in loop.py)."""
