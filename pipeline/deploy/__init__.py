"""The deploy stage: a finetuned model to ONNX (fp32, dynamic int8, head-pruned), measured, and served over HTTP."""
