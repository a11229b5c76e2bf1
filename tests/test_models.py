"""Tests for models/: registry, torchvision/timm resolution, heads, prior bias, local pretrained loading."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import models
from models.heads import find_classifier_name, replace_classifier

# (name, input size). Our own models run at their native 28/32 px; the seed models at 64 px to stay fast.
OWN_CASES = [("small_cnn", 28), ("small_cnn", 32), ("small_cnn_wide", 32)]
SEED_CASES = [
    ("resnet18", 64),
    ("resnet50", 64),
    ("shufflenet_v2_x1_0", 64),
    ("densenet121", 64),
    ("mobilenet_v2", 64),
    ("mnasnet1_0", 64),
    ("mobilenet_v3_small", 64),
    ("mobilenet_v3_large", 64),
    ("efficientnet_b0", 64),
    ("resnest50d", 64),
    ("ghostnet_100", 64),
]
NUM_CLASSES = 7


@pytest.mark.parametrize(("name", "size"), OWN_CASES + SEED_CASES)
def test_build_and_forward(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    assert isinstance(models.get_classifier(model), nn.Linear)


def test_every_registered_model_is_covered() -> None:
    # A new @register_model without a forward test above fails here.
    covered = {name for name, _ in OWN_CASES}
    assert set(models.list_models(source="registry")) <= covered


@pytest.mark.parametrize(
    ("name", "source_module"),
    [
        ("resnet18", "torchvision."),  # in both libraries: torchvision wins for the bare name
        ("efficientnet_b0", "torchvision."),
        ("timm/resnet18", "timm."),  # the prefix forces timm
        ("resnest50d", "timm."),
        ("ghostnet_100", "timm."),
        ("small_cnn", "models."),
    ],
)
def test_name_resolution(name: str, source_module: str) -> None:
    model = models.create_model(name, num_classes=3)
    assert type(model).__module__.startswith(source_module)


def test_list_models() -> None:
    names = models.list_models()
    assert {"small_cnn", "resnet18", "mobilenet_v3_small", "resnest50d", "ghostnet_100", "timm/resnet18"} <= set(names)
    assert "fasterrcnn_resnet50_fpn" not in names  # classification models only
    assert models.list_models("shufflenet_v2_*", source="torchvision") == [
        "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    ]


@pytest.mark.parametrize(
    ("wrong", "expected"), [("mobilenetv3_small", "mobilenet_v3_small"), ("resnet_18", "resnet18")]
)
def test_unknown_name_suggests_closest(wrong: str, expected: str) -> None:
    with pytest.raises(ValueError, match="Unknown model") as info:
        models.build_model(wrong, num_classes=3)
    assert expected in str(info.value)
    assert "models.list_models()" in str(info.value)


def test_duplicate_registration_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("small_cnn")(lambda *, num_classes: nn.Linear(1, num_classes))
    assert models.list_models(source="registry").count("small_cnn") == 1


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("squeezenet1_1", "classifier.1"),  # 1x1 conv classifier
        ("googlenet", "fc"),
        ("alexnet", "classifier.6"),  # same layout as vgg
        ("convnext_tiny", "classifier.2"),
        ("swin_t", "head"),
        ("vit_b_32", "heads.head"),
        ("maxvit_t", "classifier.5"),
        ("regnet_x_400mf", "fc"),
    ],
)
def test_classifier_lookup_and_replacement(name: str, expected: str) -> None:
    model = models.create_model(name, num_classes=1000)
    assert find_classifier_name(model) == expected
    new = replace_classifier(model, 4)
    assert models.get_classifier(model) is new
    assert (new.out_features if isinstance(new, nn.Linear) else new.out_channels) == 4


def test_aux_logits_disabled_in_training_mode() -> None:
    model = models.build_model("googlenet", num_classes=5).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


@pytest.mark.parametrize("name", ["small_cnn", "mobilenet_v3_small", "squeezenet1_1", "ghostnet_100"])
def test_prior_bias_sets_initial_probability(name: str) -> None:
    prior = 0.01
    model = models.build_model(name, num_classes=NUM_CLASSES, prior_bias=prior)
    bias = models.get_classifier(model).bias
    assert torch.allclose(bias, torch.full_like(bias, -math.log((1 - prior) / prior)))
    assert bias[0].item() == pytest.approx(-4.59512, abs=1e-4)
    if name == "small_cnn":
        # The head weights start near zero, so the predicted sigmoid probability is close to the prior.
        with torch.no_grad():
            probs = torch.sigmoid(model.eval()(torch.randn(4, 3, 28, 28)))
        assert probs.mean().item() == pytest.approx(prior, rel=0.3)


@pytest.mark.parametrize("prior", [0.0, 1.0, 1.5])
def test_prior_bias_must_be_probability(prior: float) -> None:
    with pytest.raises(AssertionError, match=str(prior)):
        models.build_model("small_cnn", num_classes=3, prior_bias=prior)


def test_load_pretrained_skips_head_and_strips_module_prefix(tmp_path) -> None:
    source = models.build_model("resnet18", num_classes=10)
    path = tmp_path / "resnet18_ddp.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    with pytest.warns(UserWarning, match=r"fc\.weight: file \(10, 512\) vs model \(7, 512\)"):
        model = models.build_model("resnet18", num_classes=NUM_CLASSES, pretrained=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.fc.weight.shape == (NUM_CLASSES, 512)


def test_load_pretrained_report(tmp_path) -> None:
    source = models.build_model("small_cnn", num_classes=10)
    path = tmp_path / "sd.pth"
    state_dict = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save(state_dict | {"module.extra.weight": torch.zeros(1)}, path)
    model = models.build_model("small_cnn", num_classes=NUM_CLASSES)
    with pytest.warns(UserWarning, match="fc.bias"):
        report = models.load_pretrained(model, path)
    assert [k for k, _, _ in report["skipped"]] == ["fc.weight", "fc.bias"]
    assert sorted(report["missing_keys"]) == ["fc.bias", "fc.weight"]
    assert report["unexpected_keys"] == ["extra.weight"]
    assert len(report["loaded"]) == len(source.state_dict()) - 2


@pytest.mark.parametrize("key", ["model", "state_dict"])
def test_load_checkpoint_dict(tmp_path, key: str) -> None:
    source = models.build_model("small_cnn", num_classes=NUM_CLASSES)
    path = tmp_path / "checkpoint.pth"
    # Checkpoint-style dict: state dict under key, plus plain-typed metadata that weights_only accepts.
    torch.save({key: {f"model.{k}": v for k, v in source.state_dict().items()}, "epoch": 3, "best_acc": 0.9}, path)
    model = models.build_model("small_cnn", num_classes=NUM_CLASSES, pretrained=str(path))
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_prior_bias_kept_when_head_is_skipped(tmp_path) -> None:
    path = tmp_path / "ten_class.pth"
    torch.save(models.build_model("small_cnn", num_classes=10).state_dict(), path)
    with pytest.warns(UserWarning):
        model = models.build_model("small_cnn", num_classes=3, pretrained=str(path), prior_bias=0.5)
    assert torch.equal(model.fc.bias, torch.zeros(3))


def test_missing_pretrained_file_names_path(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="pretrained/") as info:
        models.build_model("small_cnn", num_classes=3, pretrained=str(missing))
    assert str(missing) in str(info.value)


def test_wrong_architecture_is_refused(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save(nn.Linear(3, 3).state_dict() | {"foo.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="wrong architecture"):
        models.build_model("small_cnn", num_classes=3, pretrained=str(path))


@pytest.mark.parametrize("size", [16, 28, 45])
def test_small_cnn_any_input_size(size: int) -> None:
    model = models.build_model("small_cnn", num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, NUM_CLASSES)


def test_small_cnn_learns_digits() -> None:
    # Real data: sklearn's 8x8 digits upscaled to 16x16 (the smallest supported size), grey repeated as RGB.
    datasets = pytest.importorskip("sklearn.datasets")
    torch.manual_seed(0)
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).div(16.0).unsqueeze(1)
    x = nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - 0.5) / 0.5
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y))
    train, test = perm[:1000], perm[1400:]
    model = models.build_model("small_cnn", num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        model.train()
        for batch in train[torch.randperm(len(train))].split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy > 0.9, f"small_cnn reached only {accuracy:.3f} on held-out digits after 3 epochs"


def test_prior_bias_without_bias_fails_clearly() -> None:
    with pytest.raises(ValueError, match="maxvit_t"):
        models.build_model("maxvit_t", num_classes=3, prior_bias=0.1)
