"""--export pt2 (AOTInductor) and --export openvino: parity with eager on a tiny trained model, the metadata the demo
reads, the demo on each new format and on a deploy.json that benchmarks/deploy.py --deploy chose, and the one-line
errors users meet."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import main as entry
from applications.export_more import check as check_export
from config import FlagError, parse_config
from dataloader.preprocess import Preprocessing
from helpers import REPO, TIMEOUT, eager_probs, run
from serving.runtime import ModelFileError, load_exported, read_deploy_manifest, write_deploy_manifest

pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino==2026.4.1)")
if shutil.which(os.environ.get("CXX", "g++")) is None:
    pytest.skip("AOTInductor needs a C++ compiler (g++ or $CXX) on PATH", allow_module_level=True)

TRAINING_PACKAGES = {"applications", "engine", "models", "criterions", "optim", "dataloader", "utils", "config", "main",
                     "torchvision", "timm"}


@pytest.fixture(scope="module")
def exports(tiny_digits, tmp_path_factory) -> dict:
    """small_cnn (6 Conv+BN pairs) at 32x32, trained one epoch on the tiny digits, exported with --export pt2 and
    --export openvino to their default paths beside the checkpoint."""
    out = tmp_path_factory.mktemp("export_more")
    entry.run_command(["--data", str(tiny_digits), "--model", "small_cnn", "--epochs", "1", "--warmup", "0", "-b", "8",
                       "-j", "0", "--image_size", "32", "32", "--checkpoint_dir", str(out / "ck"), "--log_dir",
                       str(out / "logs"), "--name", "run", "--device", "cpu", "--no-amp", "--no-channels_last"])
    ckpt = out / "ck" / "run" / "last.pth"
    pt2 = entry.run_command(["--export", "pt2", "--resume", str(ckpt)])
    openvino = entry.run_command(["--export", "openvino", "--resume", str(ckpt)])
    return {"checkpoint": ckpt, "pt2": pt2, "openvino": openvino}


def test_pt2_package_matches_eager_with_dynamic_batch_and_metadata(exports, tiny_digits):
    result = exports["pt2"]
    assert result.path == exports["checkpoint"].with_suffix(".pt2") and result.format == "AOTInductor"
    assert result.max_diff <= 1e-4 and result.agreement == 100.0
    paths = sorted((tiny_digits / "test").rglob("*.png"))[:5]
    batch, expected, pre = eager_probs(exports["checkpoint"], paths)
    model = load_exported(result.path)
    assert (model.format, model.name, model.class_names) == ("AOTInductor", "small_cnn", [str(i) for i in range(10)])
    assert model.preprocessing.to_dict() == pre.to_dict()  # serving loads its own copy of the class
    for n in (1, 3, 5):  # the batch axis is dynamic
        got = model(batch[:n])
        assert got.shape == (n, 10)
        torch.testing.assert_close(got, expected[:n], atol=1e-4, rtol=0)
        assert torch.equal(got.argmax(1), expected[:n].argmax(1))
    with zipfile.ZipFile(result.path) as archive:  # the metadata is in the package, readable without loading it
        name = next(n for n in archive.namelist() if n.endswith(".wrapper_metadata.json"))
        meta = json.loads(archive.read(name))
    assert meta["batchnorm_folded"] == "6" and meta["output"] == "probabilities" and "uint8" in meta["input"]
    assert Preprocessing.from_dict(json.loads(meta["preprocessing"])) == pre
    assert meta["AOTI_CPU_ISA"]  # what _check_cpu_isa compares with this CPU


def test_openvino_ir_matches_eager_and_carries_the_metadata(exports, tiny_digits):
    import openvino as ov

    result = exports["openvino"]
    ckpt = exports["checkpoint"]
    assert result.path == ckpt.with_suffix(".openvino.xml") and result.path.with_suffix(".bin").is_file()
    assert result.onnx_path == ckpt.with_suffix(".onnx") and result.onnx_path.is_file()  # exported first: missing
    assert result.max_diff <= 1e-4 and result.agreement == 100.0
    paths = sorted((tiny_digits / "test").rglob("*.png"))[:5]
    batch, expected, pre = eager_probs(ckpt, paths)
    model = load_exported(result.path, threads=1)
    assert (model.format, model.name, model.threads) == ("OpenVINO", "small_cnn", 1)
    assert model.class_names == [str(i) for i in range(10)] and model.preprocessing.to_dict() == pre.to_dict()
    for n in (1, 5):
        got = model(batch[:n])
        torch.testing.assert_close(got, expected[:n], atol=1e-4, rtol=0)
        assert torch.equal(got.argmax(1), expected[:n].argmax(1))
    ir = ov.Core().read_model(str(result.path))
    assert ir.get_rt_info(["classifier", "model"]).astype(str) == "small_cnn"
    assert ir.get_rt_info(["classifier", "batchnorm_folded"]).astype(str) == "6"
    assert ir.inputs[0].get_partial_shape()[0].is_dynamic and ir.inputs[0].get_element_type() == ov.Type.u8
    # the weights stay float32: save_model's default fp16 compression would break the 1e-4 parity
    assert not any(op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f16 for op in ir.get_ops())


def test_openvino_reuses_a_fresh_onnx_file_and_rewrites_a_stale_one(exports, tmp_path, capsys):
    ckpt = tmp_path / "best.pth"
    shutil.copy(exports["checkpoint"], ckpt)
    shutil.copy(exports["openvino"].onnx_path, tmp_path / "best.onnx")  # newer than the copied checkpoint
    entry.run_command(["--export", "openvino", "--resume", str(ckpt)])
    assert f"OpenVINO reads {tmp_path / 'best.onnx'}" in capsys.readouterr().out  # the job logs to stdout
    os.utime(tmp_path / "best.onnx", (0, 0))  # now older than the checkpoint
    result = entry.run_command(["--export", "openvino", "--resume", str(ckpt), "--output", str(tmp_path / "o.xml")])
    assert "it was older than the checkpoint" in capsys.readouterr().out and result.agreement == 100.0
    assert (tmp_path / "best.onnx").stat().st_mtime > ckpt.stat().st_mtime and (tmp_path / "o.bin").is_file()


def demo_with_packages(model: Path, images: Path, *extra: str) -> tuple[list[dict], set[str]]:
    """The demo's --json output on ``images`` and the top-level packages it imported, in one process."""
    code = ("import json, runpy, sys; "
            f"sys.argv = ['classifier.py', {str(model)!r}, {str(images)!r}, '--json', '--topk', '3', "
            f"*{list(extra)!r}]; "
            "runpy.run_path('demos/classifier.py', run_name='__main__'); "
            "print('PACKAGES', json.dumps(sorted({name.split('.')[0] for name in sys.modules})))")
    out = run([sys.executable, "-c", code]).stdout
    results, packages = out.split("PACKAGES ")
    return json.loads(results), set(json.loads(packages))


@pytest.mark.parametrize("fmt", ["pt2", "openvino"])
def test_demo_classifies_with_each_new_format_as_eager_does(exports, tiny_digits, fmt):
    results, packages = demo_with_packages(exports[fmt].path, tiny_digits / "test")
    assert len(results) == 40 and packages & TRAINING_PACKAGES == set(), packages
    assert ("openvino" in packages) == (fmt == "openvino") and "onnxruntime" not in packages
    paths = [Path(r["image"]) for r in results]
    _, expected, _ = eager_probs(exports["checkpoint"], paths)
    for result, probs in zip(results, expected):
        top = result["predictions"][0]
        assert top["class"] == str(int(probs.argmax())), result
        assert top["probability"] == pytest.approx(float(probs.max()), abs=1e-4)


@pytest.mark.parametrize("fmt", ["pt2", "openvino"])
def test_the_server_batches_each_new_format_as_eager_answers(exports, tiny_digits, tmp_path, fmt):
    """main.py --serve on an AOTInductor package and an OpenVINO IR: 16 concurrent /predict requests, batched, each
    answer equal to eager within 1e-4."""
    from concurrent.futures import ThreadPoolExecutor

    from test_serve import Server, call, get, metric

    paths = sorted((tiny_digits / "test").rglob("*.png"))[:16]
    _, expected, _ = eager_probs(exports["checkpoint"], paths)

    def one(path: Path) -> dict:
        status, _, body = call(server, "POST", "/predict?topk=10", path.read_bytes(), {"Content-Type": "image/png"})
        assert status == 200, body
        return json.loads(body)["results"][0]["predictions"]

    with Server(exports[fmt].path, "--max_batch_size", "8", "--max_wait_ms", "50", "--threads", "1",
                log_path=tmp_path / "server.log") as server:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, paths))
        metrics = get(server, "/metrics")[1]
    assert f"serving small_cnn ({exports[fmt].format}, small_cnn, 10 classes" in server.log
    for predictions, probs in zip(answers, expected):
        got = torch.tensor([p["probability"] for p in sorted(predictions, key=lambda p: p["index"])])
        torch.testing.assert_close(got, probs, atol=1e-4, rtol=0)
    assert metric(metrics, "classifier_batch_size_count") < 16  # some requests shared a model call


def test_deploy_benchmark_chooses_a_runtime_and_the_demo_runs_its_manifest(exports, tiny_digits, tmp_path):
    out = run([sys.executable, "benchmarks/deploy.py", "--resume", str(exports["checkpoint"]), "--deploy",
               str(tmp_path), "--iters", "5", "--warmup", "1", "--threads", "2", "--no-int8"]).stdout
    assert "AOTInductor" in out and "OpenVINO" in out and " failed:" not in out, out
    manifest_path = tmp_path / "deploy.json"
    manifest = json.loads(manifest_path.read_text())
    assert {"model", "runtime", "threads", "batch_size", "p50_ms", "p99_ms", "fps", "top1", "cpu",
            "measured"} <= set(manifest)
    assert manifest["batch_size"] == 1 and manifest["cpu"] == torch.backends.cpu.get_cpu_capability()
    assert 0 < manifest["p50_ms"] <= manifest["p99_ms"] and manifest["fps"] > 0
    assert f"wrote {manifest_path}" in out and manifest["variant"] in out
    # every deployable form passed the gate (float exports of one network), and the fastest of them was chosen
    candidates = manifest["candidates"]
    forms = {"TorchScript", "ONNX Runtime fp32", "AOTInductor", "OpenVINO"}  # each also with 1 thread of the 2
    assert {name.split(" (")[0] for name in candidates} == forms | {f"{form}, 1 thread" for form in forms}, candidates
    assert all(c["passed_gate"] for c in candidates.values()), candidates
    assert manifest["fps"] == max(c["fps"] for c in candidates.values())
    expected_format = {"torchscript": "TorchScript", "onnxruntime": "ONNX", "aotinductor": "AOTInductor",
                       "openvino": "OpenVINO"}[manifest["runtime"]]
    model = load_exported(manifest_path)
    assert model.format == expected_format and model.manifest["threads"] == manifest["threads"]
    assert (tmp_path / manifest["model"]).is_file() and not Path(manifest["model"]).is_absolute()
    results, packages = demo_with_packages(manifest_path, tiny_digits / "test")
    assert packages & TRAINING_PACKAGES == set()
    _, expected, _ = eager_probs(exports["checkpoint"], [Path(r["image"]) for r in results])
    assert [r["predictions"][0]["class"] for r in results] == [str(int(p.argmax())) for p in expected]
    # each form's file is there too, loadable without the manifest
    for name in ("last.torchscript.pt", "last.onnx", "last.pt2", "last.openvino.xml"):
        assert load_exported(tmp_path / name).class_names == model.class_names, name


def test_a_manifest_names_file_runtime_and_threads(exports, tmp_path):
    pt2 = exports["pt2"].path
    fields = {"runtime": "openvino", "threads": 1, "batch_size": 1, "p50_ms": 1.0, "p99_ms": 2.0, "fps": 900.0,
              "top1": None, "cpu": "AVX512", "measured": "2026-01-01T00:00:00+00:00"}
    shutil.copy(exports["openvino"].path, tmp_path / "m.xml")
    shutil.copy(exports["openvino"].path.with_suffix(".bin"), tmp_path / "m.bin")
    manifest = write_deploy_manifest(tmp_path / "deploy.json", {"model": "m.xml", **fields})
    assert read_deploy_manifest(manifest)["model"] == str(tmp_path / "m.xml")
    assert load_exported(manifest).threads == 1 and load_exported(manifest, threads=2).threads == 2  # a flag wins
    mismatch = write_deploy_manifest(tmp_path / "mismatch.json", {"model": str(pt2), **fields})
    with pytest.raises(ModelFileError, match="says runtime openvino .* is a AOTInductor file"):
        load_exported(mismatch)
    missing = write_deploy_manifest(tmp_path / "missing.json", {"model": "gone.pt2", **fields})
    with pytest.raises(ModelFileError, match="names the model file .*gone.pt2, which does not exist"):
        load_exported(missing)
    (tmp_path / "other.json").write_text('{"epochs": 3}')
    with pytest.raises(ModelFileError, match="JSON but not a deploy manifest"):
        load_exported(tmp_path / "other.json")
    with pytest.raises(ValueError, match="runtime of"):
        write_deploy_manifest(tmp_path / "bad.json", {"model": "m.xml", **fields, "runtime": "tensorrt"})


def demo_error(*args: object) -> tuple[int, list[str]]:
    proc = subprocess.run([sys.executable, "demos/classifier.py", *map(str, args)], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=TIMEOUT)
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines) and "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, lines


def test_unusable_files_are_one_line_errors(exports, tiny_digits, tmp_path, monkeypatch):
    image = sorted((tiny_digits / "test").rglob("*.png"))[0]
    manifest = write_deploy_manifest(tmp_path / "deploy.json", {
        "model": "gone.onnx", "runtime": "onnxruntime", "threads": None, "batch_size": 1, "p50_ms": 1.0,
        "p99_ms": 1.0, "fps": 1.0, "top1": None, "cpu": "AVX512", "measured": "2026-01-01T00:00:00+00:00"})
    status, lines = demo_error(manifest, image)
    assert status == 1 and len(lines) == 1 and "gone.onnx, which does not exist" in lines[0]
    status, lines = demo_error(exports["openvino"].path.with_suffix(".bin"), image)  # the weights, not the graph
    assert status == 2 and len(lines) == 1 and "give its graph" in lines[0]
    # a pt2 archive without our metadata (torch.export.save of a bare program) is not mistaken for TorchScript
    program = torch.export.export(torch.nn.Linear(2, 2).eval(), (torch.zeros(1, 2),))
    torch.export.save(program, tmp_path / "bare.pt2")
    with pytest.raises(ModelFileError, match="no embedded class names .*--export pt2"):
        load_exported(tmp_path / "bare.pt2")
    # a package compiled for a wider instruction set than this CPU's fails before it runs an illegal instruction
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    with pytest.raises(ModelFileError, match="was compiled for .*AVX.* CPUs and this CPU offers DEFAULT"):
        load_exported(exports["pt2"].path)


def test_export_errors_are_one_line(exports, tmp_path, monkeypatch):
    with pytest.raises(FlagError, match=r"--export pt2 --output must end in \.pt2"):
        check_export(parse_config(["--export", "pt2", "--resume", "x.pth", "--output", "x.onnx"])[0])
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` meets when it is not installed
    with pytest.raises(ImportError, match="pip install openvino=="):
        check_export(parse_config(["--export", "openvino", "--resume", "x.pth"])[0])
    # no C++ compiler: one line before any work, exit status 2 (a missing tool, like a missing package)
    proc = subprocess.run([sys.executable, "main.py", "--export", "pt2", "--resume", str(exports["checkpoint"]),
                           "--output", str(tmp_path / "x.pt2")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "CXX": str(tmp_path / "no-such-g++"), "PYTHONPATH": str(REPO)},
                          timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no working C++ compiler"), proc.stderr
    assert "apt-get install g++" in lines[0]
    assert not (tmp_path / "x.pt2").exists()


def test_the_calibration_travels_in_both_formats(exports, tiny_digits, tmp_path):
    """A calibrated checkpoint (utils/calibration.py): the temperature is baked into the graph, the record is in the
    metadata that the demo and the server read."""
    from utils.calibration import Calibration
    from utils.checkpoint import load_checkpoint, save_checkpoint

    calibration = Calibration(temperature=2.0, threshold=0.3, coverage=0.9, qhat=0.8, alpha=0.1, images=10)
    path = tmp_path / "calibrated.pth"
    save_checkpoint(load_checkpoint(exports["checkpoint"]).replace(calibration=calibration.to_dict()), path)
    batch, probs, _ = eager_probs(exports["checkpoint"], sorted((tiny_digits / "test").rglob("*.png"))[:5])
    expected = torch.softmax(probs.log() / 2.0, dim=1)  # softmax(z / T) = softmax(log softmax(z) / T)
    for fmt in ("pt2", "openvino"):
        model = load_exported(entry.run_command(["--export", fmt, "--resume", str(path)]).path)
        assert model.calibration.to_dict() == calibration.to_dict(), fmt  # serving's own copy of the class
        torch.testing.assert_close(model(batch), expected, atol=1e-4, rtol=0)
