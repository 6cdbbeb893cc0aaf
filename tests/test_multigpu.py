"""The multi-GPU path, as far as a CPU can take it: every collective through pipeline/dist.py and on the process
group's device (checked against a stand-in for NCCL on a device that is not the CPU), strict collectives at world
size 1, the DeepSpeed configuration that costs least (read back through DeepSpeed's own config classes, then every
ZeRO stage trained in bf16 on 1 and 2 gloo ranks), and MFU from exact device names and per-pair attention FLOPs."""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

import pipeline.dist as pdist
from pipeline.config import EngineConfig, OptimConfig
from pipeline.dist import free_port
from tests.conftest import ROOT, child_env


def test_no_module_but_pipeline_dist_uses_torch_distributed():
    """A collective called directly can skip the device and strict rules of pipeline/dist.py: none is."""
    offenders = []
    for path in sorted(p for d in ("pipeline", "launch", "data_prep") for p in (ROOT / d).rglob("*.py")):
        if path == ROOT / "pipeline" / "dist.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                names = [f"{node.value.id}.{node.attr}"]
            if any(n == "torch.distributed" or n.startswith("torch.distributed.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"torch.distributed used outside pipeline/dist.py: {offenders}"


@pytest.fixture
def one_rank_group(monkeypatch):
    """A real gloo process group of one rank in this process; pipeline/dist.py bound to no device yet."""
    import torch.distributed as td

    monkeypatch.setattr(pdist, "_device", None, raising=False)
    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{pdist.free_port()}", rank=0, world_size=1)
    yield td
    td.destroy_process_group()


def test_strict_mode_runs_every_collective_at_world_size_1(one_rank_group, monkeypatch):
    td, calls = one_rank_group, []
    for name in ("all_reduce", "all_gather_object"):
        real = getattr(td, name)
        monkeypatch.setattr(td, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    monkeypatch.setenv(pdist.STRICT_ENV, "0")
    assert pdist.sum_values([2.0]) == [2.0] and pdist.gather_lists([1]) == [1] and calls == []  # skipped at size 1
    monkeypatch.setenv(pdist.STRICT_ENV, "1")
    t = pdist.all_reduce_max(torch.tensor([3.0]))
    assert pdist.sum_values([2.0]) == [2.0] and pdist.gather_lists([1]) == [1] and t.tolist() == [3.0]
    assert calls == ["all_reduce", "all_reduce", "all_gather_object"]


class FakeNccl:
    """NCCL as pipeline/dist.py meets it, over a real one-rank gloo group: it serves one device and refuses tensors
    anywhere else with NCCL's message; it says the world has 2 ranks, the other mirroring this one (sums double),
    so that code which skips collectives at world size 1 runs them here as on two GPUs."""

    def __init__(self, td, monkeypatch, device: torch.device):
        self.device, self.seen = device, []
        real_reduce, real_gather = td.all_reduce, td.all_gather_object

        def all_reduce(t, op=td.ReduceOp.SUM, group=None, async_op=False):
            self.seen.append(("all_reduce", t.device))
            if t.device != device:
                raise RuntimeError(f"No backend type associated with device type {t.device.type}")
            host = t.cpu()
            real_reduce(host, op=op)
            t.copy_((host * 2 if op == td.ReduceOp.SUM else host).to(device))

        def all_gather_object(out, obj, group=None):
            self.seen.append(("all_gather_object", None))
            mine = [None]
            real_gather(mine, obj)
            out[:] = mine * len(out)

        monkeypatch.setattr(td, "all_reduce", all_reduce)
        monkeypatch.setattr(td, "all_gather_object", all_gather_object)
        monkeypatch.setattr(td, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(td, "get_backend", lambda group=None: "nccl")


def not_the_cpu() -> torch.device:
    """A device that is not the CPU and computes, as CUDA is, on a machine without one: torch's lazy tensors."""
    try:
        import torch._lazy.ts_backend

        torch._lazy.ts_backend.init()
        device = torch.device("lazy", 0)
        assert torch.ones(1, device=device).device == device
        return device
    except Exception as e:  # a torch without the TorchScript lazy backend
        pytest.skip(f"no lazy device in torch {torch.__version__}: {e}")


def test_every_collective_runs_on_the_engines_device_under_nccl(one_rank_group, monkeypatch, synth_data, tmp_path):
    """With the engine on a device that is not the CPU and a process group that serves only that device (NCCL's
    case), the stop-signal agreement, pretraining's window sums, its evaluation and the run lock all hand their
    collectives tensors on the engine's device (before: SignalFlag's host tensor, "No backend type associated with
    device type cpu" at the first step of every run on 2 GPUs)."""
    from data_prep.format import load_data_spec
    from pipeline.dist import DistEnv
    from pipeline.preempt import SignalFlag
    from pipeline.pretrain.loop import evaluate, reduce_dict
    from pipeline.pretrain.masking import Masker
    from pipeline.run import lock_run_dir

    device = not_the_cpu()
    nccl = FakeNccl(one_rank_group, monkeypatch, device)
    monkeypatch.setattr(pdist, "_device", device, raising=False)  # as init_process_group binds the engine's device
    env = DistEnv(0, 0, 1, 1, "127.0.0.1", 0, "single")

    flag = SignalFlag(["USR2"])
    flag.received = signal.SIGUSR2  # what the handler records
    try:
        stop, (tokens, samples) = flag.agreed([300.0, 4.0])
    finally:
        flag.restore()
    assert stop == signal.SIGUSR2 and (tokens, samples) == (600.0, 8.0)  # two ranks of 300 tokens and 4 samples

    assert reduce_dict({"loss": 1.5, "tokens": 64.0}, device)["tokens"] == 128.0
    spec = load_data_spec(synth_data)
    masker = Masker(spec, 0.15, None, 8, False)
    data = {"on_bad_shard": "skip", "shuffle_shards": False, "shuffle_block": 0, "length_buckets": False}
    cfg = OmegaConf.create({"seed": 1, "data": data, "eval": {"max_batches": 2}})
    out = {"loss": 3.0, "mlm_loss": 2.0, "nsp_loss": 1.0, "mlm_correct": 1.0, "mlm_count": 4.0}
    engine = SimpleNamespace(device=device, eval_step=lambda batch: {**out, "nsp_correct": 1.0, "nsp_count": 2.0})
    run = SimpleNamespace(engine=engine, plan=SimpleNamespace(micro_batch=8))  # what evaluate reads of a started run
    blend = SimpleNamespace(sources=[SimpleNamespace(name="only", spec=spec)])  # one source
    val = evaluate(SimpleNamespace(spec=spec, blend=blend, env=env, cfg=cfg, run=run, masker=masker, pin=False))
    assert val["val_loss"] == 3.0 and val["val_mlm_acc"] == 0.25

    lock = lock_run_dir(env, tmp_path / "run")
    lock.release()
    ops = [op for op, _ in nccl.seen]
    assert ops.count("all_reduce") == 3 and "all_gather_object" in ops, ops
    assert all(d in (device, None) for _, d in nccl.seen), nccl.seen


def test_deepspeed_config_turns_off_what_costs_and_deepspeed_reads_every_key():
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from pipeline.engine import REDUCE_BUCKET, deepspeed_config, plan_batch

    optim = OmegaConf.structured(OptimConfig())
    for stage in (0, 1, 2, 3):
        for precision in ("fp32", "bf16", "fp16"):
            for nan_check in (True, False):
                eng = OmegaConf.structured(EngineConfig(zero_stage=stage, precision=precision))
                one, eight = (deepspeed_config(eng, optim, plan_batch(64, w, eng), nan_check) for w in (1, 8))
                # DeepSpeed's own parse (it refuses unknown keys in these sections) of the one-rank JSON.
                ds = DeepSpeedConfig(one)
                assert ds.timers_config.enabled is False  # no device sync at each micro-step's start and end
                bf16 = precision == "bf16"
                assert ds.bfloat16_config.check_grad_overflow is not (bf16 and nan_check)  # ours runs instead
                assert ds.grad_accum_dtype == ("fp32" if bf16 and stage > 0 else None)  # ZeRO-0 refuses the mix
                assert not ds.zero_config.overlap_comm or stage == 3  # one rank: nothing to overlap
                zero8 = DeepSpeedZeroConfig(**eight["zero_optimization"])
                assert zero8.overlap_comm is (stage > 0), (stage, zero8)
                assert zero8.reduce_bucket_size == (REDUCE_BUCKET if stage else 5e8)
    assert 85e6 / REDUCE_BUCKET >= 4  # bert-base's 85M encoder parameters: several buckets to overlap


@pytest.mark.slow
def test_every_zero_stage_trains_in_bf16_on_one_and_two_ranks(tmp_path):
    """ZeRO 0-3 in bf16 (fp32 accumulation where DeepSpeed takes it), and fp32 ZeRO-2 and -3 equal to fp32 ZeRO-0, 3
    steps of 2 micro-batches with the generated config, on 1 and 2 gloo ranks (tests/zero_matrix.py); with 2 ranks, a
    bf16 save and load too."""
    procs, ops = {}, tmp_path / "torch_extensions"  # what DeepSpeed compiles for these runs
    for n in (1, 2):  # side by side: most of each is starting Python, transformers and DeepSpeed
        launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
        cmd = [sys.executable, *(launch if n > 1 else []), "-m", "tests.zero_matrix", str(tmp_path / f"{n}.json")]
        with open(tmp_path / f"{n}.log", "w") as log:
            env = child_env({"TORCH_EXTENSIONS_DIR": str(ops)})
            procs[n] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    for n, proc in procs.items():
        proc.wait(timeout=600)
        assert proc.returncode == 0, f"{n} ranks: exit {proc.returncode}\n{(tmp_path / f'{n}.log').read_text()[-6000:]}"
    # Nothing: not DeepSpeed's shared-memory all-reduce, which training does not use (40 s of C++ on a new machine).
    assert sorted(p.name for p in ops.glob("*/*")) == []
    for nproc in (1, 2):
        res = json.loads((tmp_path / f"{nproc}.json").read_text())
        ref = res["0-fp32"]["losses"]
        assert set(res) == {"0-fp32", "2-fp32", "3-fp32", "0-bf16", "1-bf16", "2-bf16", "3-bf16"}
        for key, r in res.items():
            assert r["throughput_timer"] is False, key
            if key == "0-fp32":
                continue
            stage = int(key[0])
            if key.endswith("fp32"):  # the same sums in another layout: equal to float rounding
                assert r["losses"] == pytest.approx(ref, abs=2e-5), (nproc, key, r["losses"], ref)
                assert r["grad_accum_dtype"] == "float32", (key, r)
                assert r["optimizer"] == ("DeepSpeedZeroOptimizer" if stage == 2 else "DeepSpeedZeroOptimizer_Stage3")
                continue
            # bf16 tracks fp32 within bf16's rounding; fp32 accumulation (ZeRO 1-3) tracks it closer than ZeRO-0's.
            tol = 3e-2 if stage == 0 else 2e-3
            assert r["losses"] == pytest.approx(ref, abs=tol), (nproc, key, r["losses"], ref)
            assert r["grad_accum_dtype"] == ("bfloat16" if stage == 0 else "float32"), (key, r)
            expected = {0: "FP16_UnfusedOptimizer", 1: "BF16_Optimizer", 2: "DeepSpeedZeroOptimizer"}
            assert r["optimizer"] == expected.get(stage, "DeepSpeedZeroOptimizer_Stage3"), (key, r)
            if stage == 2:  # ZeRO-1/2's own overflow scan is off: our non-finite check runs
                assert r["check_grad_overflow"] is False and r["overlap_comm"] is (nproc > 1), (key, r)
            if nproc > 1:
                assert r["resumed_loss"] == pytest.approx(r["losses"][-1], abs=1e-6), (key, r)
                if stage >= 2:
                    assert r["reduce_bucket_size"] == 20_000_000, (key, r)


# ---------------------------------------------------------------------------------------------------------------
# MFU


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),  # SXM5
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L4", None),
        ("NVIDIA H200 NVL", None),  # not an H200 SXM: no guess
        ("NVIDIA H800", None),
    ],
)
def test_the_peak_comes_from_the_exact_device_name(name, peak):
    from pipeline.pretrain.mfu import device_peak, peak_for

    assert peak_for(name) == peak
    peak_cpu, what = device_peak(None, torch.device("cpu"))
    assert peak_cpu is None and "unknown peak" in what
    assert device_peak(123.0, torch.device("cpu"))[0] == 123.0  # logger.peak_tflops wins


def test_mfu_counts_attention_on_each_pairs_own_length():
    """The same four pairs, packed into two rows or padded into four: the same FLOPs, attention on 60^2 + 30^2 +
    20^2 + 10^2 token pairs, not on every token times the row (which the previous formula credited)."""
    import numpy as np
    from transformers import BertConfig

    from pipeline.engine import Engine
    from pipeline.pretrain.mfu import MFU, train_flops
    from pipeline.pretrain.packing import pack_batch
    from tests.test_packing import SPECIAL, masked

    rng = np.random.default_rng(0)
    samples = []
    for n in (60, 30, 20, 10):  # [CLS] A [SEP] B [SEP] of n tokens
        a = (n - 3) // 2
        ids = np.concatenate([[2], rng.integers(5, 60, a), [3], rng.integers(5, 60, n - 3 - a), [3]])
        samples.append((ids.astype(np.int64), a, 0))
    unpacked = masked(samples)
    packed = pack_batch(unpacked, 64, 8, pad_id=SPECIAL["pad"])
    assert packed["input_ids"].shape[0] == 2  # 60 | 30 + 20 + 10
    tokens, slots, sq = Engine._tokens(packed)
    assert (tokens, slots, sq) == (120.0, 128.0, 3600.0 + 900 + 400 + 100)
    assert Engine._tokens(unpacked)[::2] == (tokens, sq)  # padding counts in neither
    cfg = BertConfig(hidden_size=768, num_hidden_layers=12, intermediate_size=3072, vocab_size=30528)
    flops = train_flops(cfg, tokens, sq, masked=18)
    h, per_token = 768, 2 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert flops == 3 * (12 * (per_token * 120 + 4 * h * 5000) + 2 * (h * h + h * 30528) * 18)
    whole_row = 3 * (12 * (per_token * 120 + 4 * h * 64 * 120) + 2 * (h * h + h * 30528) * 18)
    assert flops < whole_row
    # Against a 100 TFLOP/s peak, over one second on one rank.
    rec = MFU(cfg, 100.0, torch.device("cpu"))({"tokens": tokens, "sq_tokens": sq, "mlm_count": 18.0}, 1.0, 1)
    assert rec == {"mfu": pytest.approx(flops / 100e12)}
    assert MFU(cfg, None, torch.device("cpu"))({"tokens": tokens}, 1.0, 1) == {}  # unknown peak: no MFU at all
