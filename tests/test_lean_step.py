"""The lean step (sums and non-finite flags on the device, read once per step) and fixed shapes for torch.compile."""

from __future__ import annotations

import pytest

from tests.conftest import TINY, read_metrics, run_module


def pretrain(data, run_dir, *extra):
    return run_module("pipeline.pretrain", [f"data.path={data}", f"run_dir={run_dir}", *TINY, *extra])


# The lean step against the previous one (with a skipped step): tests/test_pretrain.py::test_nan_steps_are_skipped_*.


@pytest.mark.slow
def test_compiled_step_does_not_recompile_with_fixed_shapes(synth_data, tmp_path):
    """Packed batches with fixed shapes: a fixed number of rows as well as a fixed width and masked slots (unpacked
    fixed shapes are the same Masker's: test_packing.py checks their one shape)."""
    # aot_eager: dynamo's graphs and recompile guards as with inductor, without minutes of C++ code generation
    args = ["max_steps=20", "global_batch_size=8", "engine.compile=true", "engine.compile_backend=aot_eager"]
    args += ["model.attention_dropout=0", "data.packing=true"]
    pretrain(synth_data, tmp_path / "fixed", *args, "data.fixed_shapes=true")
    graphs = [r["compiled_graphs"] for r in read_metrics(tmp_path / "fixed") if "compiled_graphs" in r]
    assert len(graphs) == 20 and graphs[0] > 0
    assert graphs == [graphs[0]] * 20, graphs  # compiled at the first step, never again over 20 steps of new data
    # The control: the same packed data with batch-dependent shapes makes dynamo compile again.
    pretrain(synth_data, tmp_path / "free", *args, "stop_after_steps=6")  # new shapes at once: 6 steps show it
    free = [r["compiled_graphs"] for r in read_metrics(tmp_path / "free") if "compiled_graphs" in r]
    assert free[-1] > free[0], free
