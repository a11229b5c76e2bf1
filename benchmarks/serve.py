"""Requests/s and latency of `main.py --serve` under N concurrent clients on loopback, unbatched against batched.

    python benchmarks/serve.py                                   # mobilenet_v3_small at 224, random weights
    python benchmarks/serve.py --formats torchscript onnx --out docs/results/serve
    python benchmarks/serve.py --resume checkpoints/RUN/best.pth # a trained checkpoint, exported with main.py

The model is exported as `main.py --jit` / `--onnx` export it: a random-weight network with BatchNorm statistics set
from real images (as benchmarks/deploy.py does; nothing is downloaded), or with `--resume` the checkpoint itself,
exported by main.py. For each format and `--threads` setting two servers run side by side, `--max_batch_size 1` (no
batching) and `--max_batch_size 16` (`--max_wait_ms` 5 by default), each a `python main.py --serve` process.
Closed-loop clients (each sends its next request as soon as it has the answer) POST 224x224 JPEG files (quality 90,
made from Fashion-MNIST test images, or random pixels without them) to /predict over keep-alive connections from one
asyncio loop in this process. For each number of clients the two servers take turns in short slices (`--rounds`),
so that load from other processes that comes and goes falls on both alike; requests/s counts the answers in the
measured part of the slices, latency is per request (send to last byte), and the mean batch size comes from each
server's /metrics histogram. The CPU time other processes took meanwhile is measured (/proc) and printed per row.

Targets (issue 15, on a 2-core CPU): at 32 clients the batched server answers >= 2x the requests/s of the unbatched
one; at the batched server's best throughput (the fewest clients that reach 95% of its highest requests/s), p99 <=
100 ms; the probabilities the batched server returns for the images equal demos/classifier.py's within 1e-5. Clients
and servers share this machine's cores.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.checkpoint_overhead import CpuShare  # noqa: E402
from benchmarks.common import markdown_table  # noqa: E402
from benchmarks.deploy import calibrate_batchnorm, real_images  # noqa: E402
from config import Config  # noqa: E402
from dataloader.preprocess import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from engine.components import preprocessing_of  # noqa: E402
from engine.export import InferenceModel, export_metadata, fuse_conv_bn, save_torchscript  # noqa: E402
from engine.onnx import onnx_metadata, write_onnx  # noqa: E402
from models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO, TARGET_CLIENTS, TARGET_P99_MS, TARGET_PROB_DIFF = 2.0, 32, 100.0, 1e-5
START_TIMEOUT = 300


# --- the model and the request bodies ---------------------------------------------------------------------------------


def export_random(model_name: str, size: int, classes: int, formats: list[str], workdir: Path) -> dict[str, Path]:
    """A random-weight network (BatchNorm statistics from real images) exported as main.py exports a checkpoint."""
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=classes).eval()
    images, _ = real_images(size)
    calibrate_batchnorm(model, images)
    cfg = Config(model=model_name, image_size=[size, size], mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    eager = InferenceModel(model, preprocessing_of(cfg), "softmax").eval()
    fused_model, folded = fuse_conv_bn(model, model_name)
    fused = InferenceModel(fused_model, preprocessing_of(cfg), "softmax").eval()
    metadata = export_metadata(cfg, [f"class_{i}" for i in range(classes)], folded=folded)
    paths = {}
    if "torchscript" in formats:
        paths["torchscript"] = workdir / "model.pt"
        save_torchscript(fused, eager, images, paths["torchscript"], metadata)
    if "onnx" in formats:
        paths["onnx"] = write_onnx(fused, images, workdir / "model.onnx", model_name=model_name,
                                   metadata=onnx_metadata(metadata))
    return paths


def export_checkpoint(checkpoint: str, formats: list[str], workdir: Path) -> dict[str, Path]:
    """A trained checkpoint exported by main.py itself."""
    flags = {"torchscript": ("--jit", "model.pt"), "onnx": ("--onnx", "model.onnx")}
    paths = {}
    for fmt in formats:
        flag, name = flags[fmt]
        subprocess.run([sys.executable, "main.py", flag, "--resume", checkpoint, "--output", str(workdir / name)],
                       cwd=REPO, check=True, capture_output=True, timeout=1800)
        paths[fmt] = workdir / name
    return paths


def request_images(size: int, count: int, folder: Path) -> tuple[list[Path], str]:
    """``count`` JPEG files (quality 90) at size x size: real test images upscaled, or random pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    batch, source = real_images(size, count=count)
    paths = []
    for i, image in enumerate(batch):
        path = folder / f"{i:03d}.jpg"
        bgr = cv2.cvtColor(image.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths, source


# --- the servers ------------------------------------------------------------------------------------------------------


class ServerProcess:
    """``python main.py --serve`` on 127.0.0.1 with a free port, its output in ``log_path``."""

    def __init__(self, model: Path, flags: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        cmd = [sys.executable, "main.py", "--serve", str(model), "--host", "127.0.0.1", "--port", "0", *flags]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        self.host, self.port = "127.0.0.1", 0

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log_path.read_text()}")
            found = re.search(r" at http://127\.0\.0\.1:(\d+)", self.log_path.read_text())
            if found:
                self.port = int(found.group(1))
                try:
                    with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=5) as reply:
                        if reply.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready within {START_TIMEOUT} s")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def batches(self) -> tuple[float, float]:
        """(model calls, images) so far, from the batch-size histogram of /metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as reply:
            text = reply.read().decode()
        count = re.search(r"^classifier_batch_size_count (\S+)$", text, re.MULTILINE)
        total = re.search(r"^classifier_batch_size_sum (\S+)$", text, re.MULTILINE)
        return float(count.group(1)), float(total.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# --- the clients ------------------------------------------------------------------------------------------------------


async def _client(host: str, port: int, bodies: list[bytes], offset: int, until: float, record_from: float,
                  latencies: list[float], failures: list[int], path: str = "/predict?topk=1") -> None:
    """One closed-loop client on one keep-alive connection: (send, read the whole answer) until ``until``;
    latencies of requests started after ``record_from`` and answered before ``until`` are recorded."""
    reader, writer = await asyncio.open_connection(host, port)
    heads = [f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n"
             f"\r\n".encode() for body in bodies]
    i = offset
    try:
        while (started := time.perf_counter()) < until:
            writer.write(heads[i % len(bodies)] + bodies[i % len(bodies)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            finished = time.perf_counter()
            if not head.startswith(b"HTTP/1.1 200"):
                failures.append(int(head[9:12]))
            elif started >= record_from and finished <= until:
                latencies.append(finished - started)
    finally:
        writer.close()


class Slice:
    """What one server did in one measured slice."""

    def __init__(self, latencies: list[float], failures: list[int], seconds: float, calls: float, images: float,
                 others: float | None) -> None:
        self.latencies, self.failures, self.seconds = latencies, failures, seconds
        self.calls, self.images, self.others = calls, images, others


def load_slice(server: ServerProcess, bodies: list[bytes], clients: int, warmup: float, seconds: float) -> Slice:
    """``clients`` concurrent clients for ``warmup`` + ``seconds``; what was answered in the measured window."""

    async def run() -> Slice:
        latencies, failures = [], []
        now = time.perf_counter()
        record_from, until = now + warmup, now + warmup + seconds
        tasks = [asyncio.create_task(_client(server.host, server.port, bodies, k * 7, until, record_from,
                                             latencies, failures)) for k in range(clients)]
        await asyncio.sleep(max(0.0, record_from - time.perf_counter()))
        calls, images = await asyncio.to_thread(server.batches)
        share = CpuShare()
        await asyncio.gather(*tasks)
        others = share.others()
        calls_after, images_after = await asyncio.to_thread(server.batches)
        return Slice(latencies, failures, seconds, calls_after - calls, images_after - images, others)

    return asyncio.run(run())


def measure(servers: dict[int, ServerProcess], bodies: list[bytes], clients: int, rounds: int, warmup: float,
            seconds: float) -> dict[int, dict]:
    """The servers take turns, ``rounds`` slices of ``seconds / rounds`` each (after ``warmup`` unmeasured seconds
    of load at the start of each slice), so that load from other processes that comes and goes falls on all of
    them alike; per server, the figures over all its slices."""
    slices: dict[int, list[Slice]] = {batch: [] for batch in servers}
    for _ in range(rounds):
        for batch, server in servers.items():
            slices[batch].append(load_slice(server, bodies, clients, warmup, seconds / rounds))
    out = {}
    for batch, parts in slices.items():
        ms = np.asarray([t for part in parts for t in part.latencies]) * 1000
        shares = [part.others for part in parts if part.others is not None]
        calls, images = sum(part.calls for part in parts), sum(part.images for part in parts)
        out[batch] = {"clients": clients, "requests": len(ms), "seconds": seconds,
                      "requests_per_s": len(ms) / seconds, "p50_ms": float(np.percentile(ms, 50)),
                      "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
                      "mean_batch": images / max(1.0, calls), "errors": sum(len(part.failures) for part in parts),
                      "other_processes_cores": float(np.mean(shares)) if shares else None}
    return out


# --- the probabilities against the demo -------------------------------------------------------------------------------


def parity_with_demo(server: ServerProcess, model: Path, images: list[Path]) -> dict:
    """The server's probabilities for ``images`` (sent concurrently, so they are batched) against
    demos/classifier.py --json on the same files: max |difference| and top-1 agreement."""
    proc = subprocess.run([sys.executable, "demos/classifier.py", str(model), str(images[0].parent), "--topk",
                           "1000", "--json"], cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
    demo = {Path(item["image"]).name: {p["class"]: p["probability"] for p in item["predictions"]}
            for item in json.loads(proc.stdout)}

    async def ask_all() -> list[dict]:
        async def ask(path: Path) -> dict:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            body = path.read_bytes()
            writer.write(f"POST /predict?topk=1000 HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         f"Content-Length: {len(body)}\r\nX-Filename: {path.name}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            reply = json.loads(await reader.readexactly(length))
            writer.close()
            return reply

        return await asyncio.gather(*(ask(path) for path in images))

    worst, agree = 0.0, 0
    for reply in asyncio.run(ask_all()):
        (result,) = reply["results"]
        served = {p["class"]: p["probability"] for p in result["predictions"]}
        reference = demo[result["image"]]
        worst = max(worst, max(abs(served[c] - reference[c]) for c in reference))
        agree += max(served, key=served.get) == max(reference, key=reference.get)
    return {"images": len(images), "max_abs_prob_diff": worst, "top1_agreement": agree / len(images) * 100}


# --- the run ----------------------------------------------------------------------------------------------------------


def verdict(rows: list[dict], setting: str, batched: int) -> dict:
    """The issue's targets for one setting (format and threads). The batched server's best throughput is taken at
    the fewest clients that reach 95% of its highest requests/s: with closed-loop clients, more clients than that
    add only queueing (latency = clients / throughput), so the highest figure itself, often at 64 clients, says
    more about the number of clients than about the server; its p99 is reported too."""
    mine = [r for r in rows if r["setting"] == setting]
    unbatched = {r["clients"]: r for r in mine if r["max_batch_size"] == 1}
    batched_at = {r["clients"]: r for r in mine if r["max_batch_size"] == batched}
    highest = max(batched_at.values(), key=lambda r: r["requests_per_s"])
    knee = min((r for r in batched_at.values() if r["requests_per_s"] >= 0.95 * highest["requests_per_s"]),
               key=lambda r: r["clients"])
    out = {"setting": setting, "best_clients": knee["clients"], "best_requests_per_s": knee["requests_per_s"],
           "p99_ms_at_best": knee["p99_ms"], "p99_target_met": knee["p99_ms"] <= TARGET_P99_MS,
           "highest_clients": highest["clients"], "highest_requests_per_s": highest["requests_per_s"],
           "p99_ms_at_highest": highest["p99_ms"]}
    if TARGET_CLIENTS in batched_at and TARGET_CLIENTS in unbatched:
        out["ratio_at_32_clients"] = (batched_at[TARGET_CLIENTS]["requests_per_s"]
                                      / unbatched[TARGET_CLIENTS]["requests_per_s"])
        out["ratio_target_met"] = out["ratio_at_32_clients"] >= TARGET_RATIO
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"torch": torch.__version__}
    for package in ("onnxruntime", "fastapi", "starlette", "uvicorn", "httptools", "uvloop", "prometheus-client"):
        try:
            found[package] = version(package)
        except Exception:  # noqa: BLE001  not installed
            found[package] = "-"
    return found


def run_setting(fmt: str, model: Path, threads: int | None, args, bodies: list[bytes], files: list[Path],
                workdir: Path) -> tuple[list[dict], dict, dict[str, str]]:
    """Both servers of one format and thread count: parity with the demo, then every number of clients."""
    setting = f"{fmt}, {threads or 'default'} threads"
    extra = ["--threads", str(threads)] if threads else []
    servers = {b: ServerProcess(model, ["--max_batch_size", str(b), "--max_wait_ms", str(args.max_wait_ms if b > 1
                                        else 0), "--max_queue", "1024", *extra], workdir / f"{fmt}-{threads}-{b}.log")
               for b in (1, args.batched)}
    rows, logs = [], {}
    try:
        for server in servers.values():
            server.wait_ready()
        parity = parity_with_demo(servers[args.batched], model, files)
        print(f"{setting}: the batched server's probabilities vs demos/classifier.py on {len(files)} images: max "
              f"|diff| {parity['max_abs_prob_diff']:.2e}, top-1 agreement {parity['top1_agreement']:.1f}%", flush=True)
        for clients in args.clients:
            for batch, figures in measure(servers, bodies, clients, args.rounds, args.warmup, args.seconds).items():
                rows.append({"setting": setting, "format": fmt, "threads": threads or "default",
                             "max_batch_size": batch, **figures})
                r = rows[-1]
                print(f"{setting}, --max_batch_size {batch:>2}, {clients:>2} clients: {r['requests_per_s']:6.1f} "
                      f"req/s, p50 {r['p50_ms']:6.1f} ms, p99 {r['p99_ms']:6.1f} ms, mean batch "
                      f"{r['mean_batch']:4.1f}, errors {r['errors']}, other processes "
                      f"{_cores(r['other_processes_cores'])} cores", flush=True)
    finally:
        for batch, server in servers.items():
            server.stop()
            logs[f"{setting}, --max_batch_size {batch}"] = server.log_path.read_text()
    return rows, parity, logs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mobilenet_v3_small", help="architecture with random weights")
    p.add_argument("--size", type=int, default=224, help="network input (square)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--resume", default=None, metavar="CKPT", help="serve this trained checkpoint instead")
    p.add_argument("--formats", nargs="+", default=["torchscript", "onnx"], choices=["torchscript", "onnx"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="--threads of the servers, one setting each (0: unset, the server's default)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    p.add_argument("--batched", type=int, default=16, help="--max_batch_size of the batched server")
    p.add_argument("--max_wait_ms", type=float, default=5.0, help="--max_wait_ms of the batched server")
    p.add_argument("--seconds", type=float, default=12.0, help="measured seconds per server and number of clients")
    p.add_argument("--rounds", type=int, default=6, help="slices those seconds are split into, servers alternating")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds of load at the start of each slice")
    p.add_argument("--images", type=int, default=64, help="distinct request images (JPEG files)")
    p.add_argument("--out", type=Path, default=None, help="write report.json, summary.csv and log.txt here")
    args = p.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    loadavg = os.getloadavg()[0]
    rows, parity, logs = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        workdir = Path(tmp)
        print(f"exporting {args.resume or f'{args.model} (random weights)'} as {', '.join(args.formats)} ...",
              flush=True)
        paths = (export_checkpoint(args.resume, args.formats, workdir) if args.resume else
                 export_random(args.model, args.size, args.classes, args.formats, workdir))
        if args.resume:
            from serving.runtime import load_exported

            args.size = int(load_exported(next(iter(paths.values()))).preprocessing.image_size[0])
        files, source = request_images(args.size, args.images, workdir / "images")
        bodies = [path.read_bytes() for path in files]
        for fmt, model in paths.items():
            for threads in args.threads:
                setting_rows, setting_parity, setting_logs = run_setting(fmt, model, threads or None, args, bodies,
                                                                         files, workdir)
                rows += setting_rows
                parity[setting_rows[0]["setting"]] = setting_parity
                logs.update(setting_logs)
    verdicts = [verdict(rows, setting, args.batched) for setting in parity]
    env = (f"environment: {', '.join(f'{k} {v}' for k, v in versions().items())}, CPU capability "
           f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores (torch's default threads "
           f"{torch.get_num_threads()}); servers and clients on this machine (loopback); 1-minute load average "
           f"{loadavg:.2f} at the start")
    text = report_text(rows, verdicts, parity, args, source, env)
    print("\n" + text)
    if args.out:
        write_results(args.out, rows, verdicts, parity, args, argv, source, env, started, logs, text)


def _cores(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _verdict_line(v: dict, parity: dict) -> str:
    ratio = v.get("ratio_at_32_clients")
    diff = parity["max_abs_prob_diff"]
    return (f"{v['setting']}: at {TARGET_CLIENTS} clients batched / unbatched = "
            f"{'n/a' if ratio is None else f'{ratio:.2f}x'} (target >= {TARGET_RATIO:g}x: "
            f"{'PASS' if v.get('ratio_target_met') else 'FAIL'}); best batched throughput "
            f"{v['best_requests_per_s']:.1f} req/s from {v['best_clients']} clients, p99 {v['p99_ms_at_best']:.1f} ms "
            f"(target <= {TARGET_P99_MS:g} ms: {'PASS' if v['p99_target_met'] else 'FAIL'}; highest "
            f"{v['highest_requests_per_s']:.1f} req/s at {v['highest_clients']} clients, p99 "
            f"{v['p99_ms_at_highest']:.1f} ms); probabilities vs the demo max |diff| {diff:.2e} (target <= "
            f"{TARGET_PROB_DIFF:g}: {'PASS' if diff <= TARGET_PROB_DIFF else 'FAIL'})")


def report_text(rows: list[dict], verdicts: list[dict], parity: dict, args, source: str, env: str) -> str:
    headers = ["format", "threads", "--max_batch_size", "clients", "requests/s", "p50 ms", "p90 ms", "p99 ms",
               "mean batch", "errors", "other processes (cores)"]
    table = [[r["format"], r["threads"], r["max_batch_size"], r["clients"], f"{r['requests_per_s']:.1f}",
              f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['mean_batch']:.1f}", r["errors"],
              _cores(r["other_processes_cores"])] for r in rows]
    lines = [f"Serving {args.resume or f'{args.model} (random weights)'} at {args.size}x{args.size}: POST /predict "
             f"with one {args.size}x{args.size} JPEG ({source}), closed-loop clients on loopback, "
             f"{args.seconds:g} s measured per row in {args.rounds} slices (each after {args.warmup:g} s of unmeasured "
             f"load), the two servers alternating; batched: --max_batch_size {args.batched} --max_wait_ms "
             f"{args.max_wait_ms:g}", "", markdown_table(headers, table), ""]
    lines += [_verdict_line(v, parity[v["setting"]]) for v in verdicts]
    lines.append(env)
    return "\n".join(lines)


def write_results(out: Path, rows: list[dict], verdicts: list[dict], parity: dict, args, argv, source: str, env: str,
                  started: str, logs: dict[str, str], text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/serve.py", *(argv if argv is not None else sys.argv[1:])])
    report = {"command": command, "started": started, "environment": env, "versions": versions(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
              "model": args.resume or args.model, "size": args.size, "request_images": source,
              "batched_max_batch_size": args.batched, "max_wait_ms": args.max_wait_ms, "seconds": args.seconds,
              "rounds": args.rounds, "warmup": args.warmup, "rows": rows, "parity_with_demo": parity,
              "targets": verdicts}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    columns = ["format", "threads", "max_batch_size", "clients", "requests_per_s", "p50_ms", "p90_ms", "p99_ms",
               "mean_batch", "errors", "other_processes_cores"]
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([round(r[c], 2) if isinstance(r[c], float) else r[c] for c in columns])
    server_logs = "".join(f"\n===== server log: {name} =====\n{log}" for name, log in logs.items())
    (out / "log.txt").write_text(f"$ {command}\n{text}\n{server_logs}")


if __name__ == "__main__":
    main()
