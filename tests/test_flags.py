"""Every training flag does something real: each runs one short epoch through main.py and its effect is checked."""
from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main as entry
from config import Config, build_parser, given, parse_config
from utils.checkpoint import load_checkpoint
from utils.errors import DataError, UsageError

REPO = Path(__file__).resolve().parents[1]


def train_once(data: Path, out: Path, extra: list[str], name: str = "run") -> dict:
    entry.run_command(["--data", str(data), "--epochs", "2", "--stop_epoch", "1", "--warmup", "0", "-b", "8", "-j", "0",
                "--image_size", "32", "32", "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"),
                "--name", name, "--device", "cpu", *extra])
    return load_checkpoint(out / "ck" / name / "last.pth")


FLAG_SETS = {
    "amp": (["--amp"], {"amp": True}),
    "no_amp_auto_channels_last": (["--no-amp"], {"amp": False}),
    "channels_last": (["--channels_last"], {"channels_last": True}),
    "bn_momentum": (["--bn_momentum", "0.2"], {"bn_momentum": 0.2}),
    "cache_images": (["--cache_images", "ram", "--aug", "-j", "1", "--no-channels_last"],
                     {"cache_images": "ram", "channels_last": False}),
    "bce_label_smoothing": (["--criterion", "bce", "--label_smoothing", "0.1"], {"criterion": "bce"}),
    "focal_ghm_threshold": (["--criterion", "focal", "--focal_gamma", "1.5", "--ghm_loss", "--ghm_bins", "5",
                             "--ghm_momentum", "0.5", "--threshold_loss", "--loss_threshold", "0.8"],
                            {"criterion": "focal", "ghm_loss": True, "ghm_bins": 5, "threshold_loss": True}),
    "bce_ohm_class_weights": (["--criterion", "bce", "--ohm_loss", "--ohm_ratio", "0.5", "--weighted_loss"],
                              {"criterion": "bce", "ohm_loss": True, "weighted_loss": "auto"}),
    "arcface_picks_cosine_head": (["--criterion", "arcface", "--arc_margin", "0.3", "--arc_scale", "16"],
                                  {"criterion": "arcface", "head": "cosine", "arc_scale": 16.0}),
    "amsoftmax_head_options": (["--criterion", "amsoftmax", "--arc_margin", "0.35", "--head", "cosine",
                                "--pooling", "avgmax", "--dropout", "0.2"],
                               {"head": "cosine", "pooling": "avgmax", "dropout": 0.2}),
    "sgd_cosine_wd": (["--optimizer", "sgd", "--momentum", "0.9", "--weight_decay", "1e-4", "--lr_schedule",
                       "cosine", "--lr", "0.05"], {"optimizer": "sgd", "lr_schedule": "cosine"}),
    "adamw": (["--optimizer", "adamw", "--weight_decay", "0.05"], {"optimizer": "adamw"}),
    "torchvision_resnet18": (["--model", "resnet18"], {"model": "resnet18"}),
    "timm_model": (["--model", "timm/resnet18"], {"model": "timm/resnet18"}),
    "non_square_input": (["--image_size", "24", "40"], {"image_size": [24, 40]}),
    "mean_std_seed": (["--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25", "--seed", "3"],
                      {"mean": [0.5, 0.5, 0.5], "seed": 3}),
    "aug_workers": (["--aug", "-j", "1", "--num_classes", "10", "--log_interval", "1"],
                    {"aug": "basic", "workers": 1}),
    "aug_names": (["--aug", "randaugment,myaugment,erasing,gridmask", "-j", "1"],
                  {"aug": "randaugment,myaugment,erasing,gridmask"}),
    "mixes": (["--mixup", "--cutmix", "0.5", "--ricap", "--mix_prob", "0.9", "--log_interval", "1"],
              {"mixup": 0.8, "cutmix": 0.5, "ricap": 0.3, "mix_prob": 0.9}),
    "multi_scale_balance": (["--multi_scale", "--multi_scale_sizes", "24", "40", "--balance"],
                            {"multi_scale": True, "multi_scale_sizes": [24, 40], "balance": True}),
    "progressive": (["--progressive_size", "20", "--progressive_epochs", "1", "2"],
                    {"progressive_size": 20, "progressive_epochs": [1, 2]}),
    "accum_clip_penalties": (["--accum_steps", "2", "--clip_grad", "1.0", "--l1", "1e-6", "--l2", "1e-5"],
                             {"accum_steps": 2, "clip_grad": 1.0, "l1": 1e-6, "l2": 1e-5}),
    "ema_swa_patience": (["--ema", "--ema_decay", "0.99", "--swa", "--swa_epochs", "1", "--swa_lr", "1e-4",
                          "--patience", "3"], {"ema": True, "swa": True, "swa_lr": 1e-4, "patience": 3}),
    "compile": (["--compile", "--no-channels_last"], {"compile": True}),
    "radam_lookahead": (["--optimizer", "radam", "--lookahead", "--lookahead_k", "2", "--lookahead_alpha", "0.6"],
                        {"optimizer": "radam", "lookahead": True, "lookahead_k": 2, "lookahead_alpha": 0.6}),
    "ranger_sgdr": (["--optimizer", "ranger", "--lr_schedule", "sgdr", "--restart_epochs", "1", "--restart_mult",
                     "1.5", "--restart_decay", "0.5"], {"lr_schedule": "sgdr", "restart_mult": 1.5}),
    "lamb_onecycle_lr_scale_batch": (["--optimizer", "lamb", "--lr_schedule", "onecycle", "--lr_scale_batch", "16"],
                                     {"lr_schedule": "onecycle", "lr_scale_batch": 16}),
    "nadam_multistep": (["--optimizer", "nadam", "--lr_schedule", "multistep", "--milestones", "1", "--gamma",
                         "0.5"], {"milestones": [1], "gamma": 0.5}),
    "adabelief_plateau": (["--optimizer", "adabelief", "--lr_schedule", "plateau", "--plateau_patience", "0"],
                          {"lr_schedule": "plateau", "plateau_patience": 0}),
    "novograd_freeze_backbone_lr": (["--optimizer", "novograd", "--freeze", "1", "--backbone_lr_scale", "0.1"],
                                    {"freeze": 1, "backbone_lr_scale": 0.1}),
    "adabound": (["--optimizer", "adabound"], {"optimizer": "adabound"}),
    "seed_spelling_sigmoid": (["--criterion", "sigmoid"], {"criterion": "bce"}),  # the main seed's name for bce
    "aug_parameters": (["--aug", "flipcrop,vflip,cutout,erasing,gridmask", "--crop_padding", "3", "--vflip_p", "0.3",
                        "--cutout_holes", "2", "--cutout_length", "6", "--erasing_p", "0.4", "--erasing_scale", "0.05",
                        "0.2", "--erasing_ratio", "0.5", "2", "--erasing_value", "0", "--gridmask_p", "0.7",
                        "--gridmask_d", "8", "16", "--gridmask_ratio", "0.3", "0.5", "--gridmask_rotate", "10"],
                       {"aug": "flipcrop,vflip,cutout,erasing,gridmask", "crop_padding": 3, "vflip_p": 0.3,
                        "cutout_length": 6, "erasing_scale": [0.05, 0.2], "erasing_value": "0", "gridmask_d": [8, 16]}),
    "mix_probs": (["--mixup", "--cutmix", "--mix_probs", "0.3", "0.5"], {"mix_probs": [0.3, 0.5]}),
    "cosine_min_lr": (["--lr_schedule", "cosine", "--min_lr", "1e-5"], {"min_lr": 1e-5}),
    "multistep_lr_steps": (["--lr_schedule", "multistep", "--milestones", "1", "--lr_steps", "1e-3", "1e-4"],
                           {"lr_steps": [1e-3, 1e-4]}),
}


@pytest.mark.parametrize("flags,expected", FLAG_SETS.values(), ids=FLAG_SETS.keys())
def test_training_flag(tiny_digits, tmp_path, flags, expected):
    ckpt = train_once(tiny_digits, tmp_path, flags)
    cfg = ckpt.config
    for key, value in expected.items():
        assert cfg[key] == value, key
    assert math.isfinite(ckpt.metrics["train_loss"]) and math.isfinite(ckpt.metrics["val_loss"])
    assert ckpt.preprocessing["image_size"] == cfg["image_size"]


def test_every_flag_is_exercised_somewhere():
    """A new flag must get a test: either here or in the listed tests that cover it."""
    covered_elsewhere = {"data", "epochs", "stop_epoch", "warmup", "batch_size", "workers", "checkpoint_dir",
                         "log_dir", "name", "device", "resume", "evaluation", "jit", "split", "output", "lr",
                         "val_ratio", "pretrained", "prior_bias", "log_interval", "num_classes", "momentum",
                         "sync_bn",  # sync_bn: tests/test_tricks.py (two real processes)
                         "aug_preview",  # aug_preview: tests/test_aug_preview.py (writes a PNG, trains nothing)
                         "tta",  # tta: tests/test_tta.py (views, probabilities by hand, evaluation)
                         # submission CSV, ensembles: tests/test_predict.py; averaging: tests/test_average.py
                         "predict", "ensemble_weights", "probabilities",
                         "average_last", "average", "update_bn", "keep_epochs",
                         "onnx", "int8",  # tests/test_onnx.py (export, ONNX Runtime parity, int8)
                         "export",  # tests/test_export_more.py (AOTInductor and OpenVINO parity, demo, deploy.json)
                         "decode",  # decode: tests/test_gpu_decode.py (JPEG photos; digits are PNG; train, eval, DDP)
                         # tests/test_resize_mode.py (geometry, datasets, checkpoint/export/demo/predict parity)
                         "resize_mode", "crop_scale", "crop_ratio", "crop_pct",
                         # the lr finder trains nothing to check here: tests/test_lr_find.py
                         "lr_find", "lr_find_start", "lr_find_end", "lr_find_steps",
                         # tests/test_distill.py (knowledge files, offline/online distillation, K-fold)
                         "knowledge", "distill", "distill_alpha", "distill_T", "teacher", "teacher_ckpt", "kfold",
                         "fold",
                         "repeat",  # tests/test_repeat.py (2 seeds under torchrun, the report)
                         # tests/test_calibration.py (fit, answers, evaluation with OOD images, exports, demo, server)
                         "calibrate", "reject_coverage", "conformal_alpha", "answer", "ood_data",
                         # tests/test_lora.py (adapters + head train, compact checkpoints, merge, resume, torchrun)
                         "lora", "lora_alpha", "lora_dropout", "lora_targets", "freeze_stages",
                         # tests/test_curriculum.py (stages, file, weights reaching the loss, pacing, stale files)
                         "make_curriculum", "curriculum_thresholds", "curriculum_weights", "curriculum_learning",
                         "curriculum_pacing",
                         # tests/test_visualize.py (CAM methods, peaks, contact sheet, folder input)
                         "visual_data", "visual_method", "target_layer", "visual_limit",
                         # tests/test_checkpoint_format.py (config.yaml round trip) and tests/test_errors.py
                         "config", "print_config", "debug",
                         # tests/test_preemption.py (mid-epoch checkpoints, signals, elastic restarts)
                         "save_every_minutes", "save_every_steps",
                         "monitor",  # tests/test_monitor.py (best.pth by loss, macro F1, AUROC, top-1; resume)
                         # tests/test_serve.py (a server process: batching, protocol, errors, SIGTERM)
                         "serve", "host", "port", "max_batch_size", "max_wait_ms", "max_queue", "max_body_mb", "topk",
                         "threads",
                         # tests/test_semi_supervised.py (pseudo-label rounds and file, mean teacher, both under torchrun)
                         "pseudo_label", "pseudo_threshold", "pseudo_rounds", "pseudo_targets", "pseudo_weight",
                         "mean_teacher", "unlabeled", "unlabeled_batch_size", "consistency_weight",
                         "consistency_rampup", "mean_teacher_decay",
                         # tests/test_gan.py (a conditional DCGAN on one and two processes, its image sets, and
                         # training with another labelled set)
                         "gan", "gan_image_size", "gan_latent", "gan_width", "gan_epochs", "gan_lr", "gan_diversity",
                         "gan_generate",
                         "extra_train", "extra_weight",
                         # tests/test_audit.py (corrupted digits: flips, copies, cleaned root, torchrun, the page)
                         "audit", "audit_fix", "audit_skip_labels", "audit_phash_threshold", "audit_pixel_tolerance",
                         "audit_top"}
    flags_here = {a.lstrip("-").removeprefix("no-") for flags, _ in FLAG_SETS.values() for a in flags
                  if a.startswith("--")}
    dests = {a.dest for a in build_parser()._actions if a.option_strings and a.dest != "help"}
    aliases = {"model": "model"}
    missing = dests - covered_elsewhere - {aliases.get(f, f) for f in flags_here}
    assert not missing, f"flags without a test: {sorted(missing)}"
    assert set(Config().to_dict()) == dests


def test_sgd_schedule_changes_lr_per_step(tiny_digits, tmp_path):
    ckpt = train_once(tiny_digits, tmp_path, ["--optimizer", "sgd", "--lr_schedule", "cosine", "--lr", "0.1",
                                              "--warmup", "1"])
    # 40 images / batch 8 = 5 steps in epoch 0 of 2 with 1 warmup epoch: 0.1 + 0.9 * 5/5 → factor 1.0
    assert ckpt.optimizer["param_groups"][0]["lr"] == pytest.approx(0.1)
    assert ckpt.scheduler["last_epoch"] == 5


def test_pretrained_weights_load_with_head_skipped(tiny_digits, tmp_path):
    from models import build_model
    source = build_model("small_cnn", num_classes=3)
    weights = tmp_path / "weights.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, weights)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="fc"):
        ckpt = train_once(tiny_digits, tmp_path, ["--pretrained", str(weights), "--lr", "1e-12"])
    # with a negligible lr the backbone is still the loaded one; the 10-class head is new
    assert torch.allclose(ckpt.model["features.0.0.0.weight"], source.state_dict()["features.0.0.0.weight"],
                          atol=1e-6)
    assert ckpt.model["fc.weight"].shape == (10, 128)


def test_the_training_log_gives_parameters_and_compute(tiny_digits, tmp_path):
    train_once(tiny_digits, tmp_path, ["--model", "small_cnn_tiny"], name="size")
    log = (tmp_path / "ck" / "size" / "train.log").read_text()
    assert re.search(r"parameters: [\d,]+ total, [\d,]+ trainable \(100\.00%\); [\d.,]+ M multiply-accumulates per "
                     r"32x32 image \(thop; FLOPs = 2x\)", log), log[-2000:]


def test_prior_bias_sets_initial_head_bias(tiny_digits, tmp_path):
    ckpt = train_once(tiny_digits, tmp_path, ["--criterion", "bce", "--prior_bias", "0.01", "--lr", "1e-12"])
    assert ckpt.model["fc.bias"].tolist() == pytest.approx([-math.log(99)] * 10, abs=1e-4)


def test_prior_bias_per_class_from_frequencies_or_a_file(tiny_digits, tmp_path):
    """'freq': every class at its share of the train split; a file raises the classes it lists, the others keep
    the bias they would have had without --prior_bias (same seed)."""
    def logit(p: float) -> float:
        return -math.log((1 - p) / p)

    flags = ["--criterion", "bce", "--lr", "1e-12", "--seed", "3"]
    freq = train_once(tiny_digits, tmp_path, flags + ["--prior_bias", "freq"], name="freq")
    counts = [len(list((tiny_digits / "train" / str(c)).glob("*.png"))) for c in range(10)]
    assert freq.model["fc.bias"].tolist() == pytest.approx([logit(n / sum(counts)) for n in counts], abs=1e-4)
    plain = train_once(tiny_digits, tmp_path, flags, name="plain")
    (tmp_path / "priors.csv").write_text("class,prior\n3,0.2\n7,0.05\n")
    listed = train_once(tiny_digits, tmp_path, flags + ["--prior_bias", str(tmp_path / "priors.csv")], name="file")
    bias, before = listed.model["fc.bias"].tolist(), plain.model["fc.bias"].tolist()
    assert bias[3] == pytest.approx(logit(0.2), abs=1e-4) and bias[7] == pytest.approx(logit(0.05), abs=1e-4)
    assert [b for i, b in enumerate(bias) if i not in (3, 7)] == pytest.approx(
        [b for i, b in enumerate(before) if i not in (3, 7)], abs=1e-6)
    assert listed.config["prior_bias"] == str(tmp_path / "priors.csv")
    (tmp_path / "bad.csv").write_text("class,prior\ncat,0.2\n")
    for value, message in ((str(tmp_path / "bad.csv"), "line 2: 'cat' must be one of"),
                           (str(tmp_path / "none.csv"), "not a probability, 'freq' or an existing CSV")):
        with pytest.raises((UsageError, DataError), match=message):
            train_once(tiny_digits, tmp_path, flags + ["--prior_bias", value], name="bad")
    bad = subprocess.run([sys.executable, "main.py", "--prior_bias", "1.5"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: argument --prior_bias: a probability in (0, 1)")


def test_csv_lists_and_val_carved_from_train(tiny_digits, tmp_path):
    root = tmp_path / "csvdata"
    root.mkdir()
    rows = [(str(p.relative_to(tiny_digits)), p.parent.name) for p in sorted((tiny_digits / "train").rglob("*.png"))]
    with open(root / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("filename", "label"), *[("../digits/" + f, c) for f, c in rows]])
    (root.parent / "digits").symlink_to(tiny_digits)
    ckpt = train_once(root, tmp_path, ["--val_ratio", "0.25"], name="csv")
    assert ckpt.config["val_ratio"] == 0.25
    out = tmp_path / "eval"
    entry.run_command(["--evaluation", "--resume", str(tmp_path / "ck/csv/last.pth"), "--split", "val", "--output",
                str(out), "-j", "0"])
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == 10  # 25% of 40, stratified, the same images training validated on
    assert report["top1"] == pytest.approx(ckpt.metrics["val_top1"])


def test_bce_export_outputs_probabilities(tiny_digits, tmp_path):
    train_once(tiny_digits, tmp_path, ["--criterion", "bce"], name="bce")
    exported = tmp_path / "bce.pt"
    entry.run_command(["--jit", "--resume", str(tmp_path / "ck/bce/last.pth"), "--output", str(exported)])
    proc = subprocess.run([sys.executable, "demos/classifier.py", str(exported), str(tiny_digits / "test"),
                           "--topk", "10", "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for item in json.loads(proc.stdout):
        assert sum(p["probability"] for p in item["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_margin_loss_switches_and_head_options_resume_evaluate_and_export(tiny_digits, tmp_path):
    weights = tmp_path / "class_weights.csv"
    weights.write_text("class,weight\n" + "".join(f"{c},{1 + c / 10}\n" for c in range(10)))
    flags = ["--criterion", "amsoftmax", "--pooling", "avgmax", "--dropout", "0.2", "--ghm_loss", "--ghm_momentum",
             "0.9", "--weighted_loss", str(weights), "--no-amp", "--no-channels_last"]
    full = train_once(tiny_digits, tmp_path, flags + ["--stop_epoch", "2"], name="full")
    train_once(tiny_digits, tmp_path, flags, name="split")
    entry.run_command(["--resume", str(tmp_path / "ck/split/last.pth"), "-j", "0"])
    split = load_checkpoint(tmp_path / "ck/split/last.pth")
    assert full.epoch == split.epoch == 1
    assert split.config["head"] == "cosine" and split.config["weighted_loss"] == str(weights)
    assert split.model["fc.weight"].shape == (10, 256) and "fc.bias" not in split.model  # cosine, avg+max
    # GHM's running bin counts travel with the checkpoint, so the resumed run continues exactly
    assert split.criterion["ghm.running_counts"].sum() > 0
    assert torch.equal(full.criterion["ghm.running_counts"], split.criterion["ghm.running_counts"])
    for key, tensor in full.model.items():
        assert torch.equal(tensor, split.model[key]), f"{key} differs after resume"

    out = tmp_path / "eval"
    entry.run_command(["--evaluation", "--resume", str(tmp_path / "ck/split/last.pth"), "--split", "val", "--output",
                str(out), "-j", "0"])
    assert json.loads((out / "report.json").read_text())["top1"] == pytest.approx(split.metrics["val_top1"])
    exported = tmp_path / "amsoftmax.pt"
    entry.run_command(["--jit", "--resume", str(tmp_path / "ck/split/last.pth"), "--output", str(exported)])
    probs = torch.jit.load(str(exported))(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert probs.shape == (2, 10) and torch.allclose(probs.sum(1), torch.ones(2))


def test_every_application_of_main_resolves_and_two_at_once_are_refused():
    import importlib

    import main as entry

    for module in entry.APPLICATIONS.values():
        application = importlib.import_module(module)
        assert callable(application.check) and callable(application.run), module
    with pytest.raises(ValueError, match="choose one job; got --jit, --onnx"):
        entry.run_command(["--jit", "--onnx", "--resume", "x.pth"])


@pytest.mark.parametrize("typed,model", [("mobilenetv3_small", "mobilenet_v3_small"),
                                         ("mobilenetv3_large", "mobilenet_v3_large"),
                                         ("efficientnet-b0", "efficientnet_b0"), ("efficientnet-b4", "efficientnet_b4"),
                                         ("ghostnet", "ghostnet_100"),
                                         ("resnet18", "resnet18"), ("timm/mobilenetv3_small_100",
                                                                    "timm/mobilenetv3_small_100")])
def test_the_main_seeds_model_spellings_resolve(typed, model):
    from models import model_source

    for flag in ("--model", "--arch"):
        cfg, explicit = parse_config([flag, typed])
        assert cfg.model == model and "model" in explicit
    assert model_source(cfg.model) in ("torchvision", "timm")


def test_given_is_a_typed_flag_or_the_default():
    """Jobs take a flag over a checkpoint's or the machine's choice only when the user typed it."""
    cfg, explicit = parse_config(["--no-amp", "--epochs", "3"])
    assert given(cfg, explicit, "amp") is False and given(cfg, explicit, "epochs", 99) == 3
    assert given(cfg, explicit, "split") is None and given(cfg, explicit, "split", "val") == "val"
    assert given(*parse_config([]), "amp") is None  # the default value of --amp is not a request
