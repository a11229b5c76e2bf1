"""Tests for models/: registry, torchvision/timm resolution, heads, prior bias, local pretrained loading."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import models
from dataloader.preprocess import IMAGENET_MEAN, IMAGENET_STD
from models.airbench import WhiteningStem, dirac_conv
from models.complexity import count_macs
from models.heads import find_classifier_name, replace_classifier

# (name, input size). Our own models run at their native 28/32 px; the seed models at 64 px to stay fast.
OWN_CASES = [("small_cnn", 28), ("small_cnn", 32), ("small_cnn_wide", 32), ("small_cnn_tiny", 16), ("wrn10_4", 28), ("wrn16_4", 28),
             ("wrn22_1", 28), ("wrn16_8", 28), ("wrn28_10", 32), ("resnet9", 32), ("resnet9_half", 28),
             ("airbench94", 28), ("airbench_m", 32), ("airbench94_whiten", 28), ("airbench_m_whiten", 32),
             ("airbench_m_whiten3", 28)]
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


def test_airbench_convolutions_start_as_identity() -> None:
    # Dirac init: the first min(in, out) filters pass their input channel through; the rest keep a random init.
    torch.manual_seed(0)
    conv = dirac_conv(4, 8)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        out = conv(x)
    assert torch.equal(out[:, :4], x)
    assert out[:, 4:].abs().sum() > 0
    # the stem conv (3 -> 24) and each group's first conv (24 -> 64, 64 -> 128...) all start this way
    model = models.build_model("airbench_m", num_classes=NUM_CLASSES)
    first = model.features[0][0]
    assert torch.equal(first.weight[:3, :, 1, 1], torch.eye(3))


def test_whitening_stem_before_fit_passes_patches_in_both_signs() -> None:
    stem = WhiteningStem(3, 24)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        out = stem.conv(x)
    patches = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(2, 4, 4, 12)
    torch.testing.assert_close(out[:, :12].permute(0, 2, 3, 1), patches)
    torch.testing.assert_close(out[:, 12:], -out[:, :12])
    # the filters are a buffer: nothing can train them, and they are saved with the weights
    assert not list(stem.parameters())
    assert "conv.weight" in stem.state_dict()


def test_whitening_stem_fit_whitens_patches() -> None:
    # RGB images with correlated neighbours and channels: after fit the 12 directions are uncorrelated, each with a
    # second moment of lambda / (lambda + eps): 1 but for the weakest direction here (lambda about 0.013)
    torch.manual_seed(0)
    base = torch.randn(400, 1, 12, 12).cumsum(-1).cumsum(-2) / 4
    images = torch.cat([base, 0.7 * base + 0.3 * torch.randn_like(base), torch.randn_like(base)], dim=1)
    stem = WhiteningStem(3, 24)
    stem.fit(images)
    with torch.no_grad():
        out = stem.conv(images)
    flat = out[:, :12].permute(1, 0, 2, 3).reshape(12, -1).double()
    moment = flat @ flat.T / flat.shape[1]
    off_diagonal = moment - torch.diag(moment.diagonal())
    assert off_diagonal.abs().max() < 1e-2
    assert ((moment.diagonal() > 0.95) & (moment.diagonal() < 1.0)).all(), moment.diagonal()
    torch.testing.assert_close(stem.conv.weight[12:], -stem.conv.weight[:12])


def test_whitening_stem_gives_grey_images_zero_filters_where_there_is_no_variance() -> None:
    # grey images stored as RGB: 2x2 patches span 4 of 12 dimensions, so 4 filter pairs live and 8 are zero (not
    # scaled by 1 / sqrt(eps), which would blow up the channel differences that augmentation noise brings)
    grey = torch.randn(200, 1, 10, 10).expand(-1, 3, -1, -1)
    stem = WhiteningStem(3, 24)
    stem.fit(grey)
    norms = stem.conv.weight[:12].flatten(1).norm(dim=1)
    assert (norms > 0).sum() == 4 and (norms[4:] == 0).all()


def test_whitening_stem_of_3x3_patches_keeps_the_size_and_finds_ten_grey_directions() -> None:
    # grey images normalised per channel (ImageNet mean/std) span the 9 pixel values of a 3x3 patch plus the
    # constant offset the per-channel means add: 10 of 27 directions have variance
    grey = torch.rand(200, 1, 12, 12).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    stem = models.build_model("airbench_m_whiten3", num_classes=NUM_CLASSES).features[0]
    stem.fit((grey - mean) / std)
    norms = stem.conv.weight[:12].flatten(1).norm(dim=1)
    assert (norms > 0).sum() == 10 and (norms[10:] == 0).all()
    with torch.no_grad():
        assert stem(torch.randn(2, 3, 28, 28)).shape == (2, 24, 28, 28)


def test_whitened_airbench_asks_for_init_images_and_counts_its_stem() -> None:
    model = models.build_model("airbench_m_whiten", num_classes=NUM_CLASSES)
    plain = models.build_model("airbench_m", num_classes=NUM_CLASSES)
    assert model.init_images == 5000 and plain.init_images == 0
    # thop sees the whitening stem as the nn.Conv2d it is, with its buffer as weight: 24 x 12 multiply-adds per
    # output pixel, 27 x 27 of them at 28 px
    assert count_macs(model.features[0], (28, 28)) == 24 * 12 * 27 * 27
    before = model.features[0].conv.weight.clone()
    assert not model.features[0].fitted
    model.init_from_images(torch.randn(50, 3, 28, 28))
    assert not torch.equal(model.features[0].conv.weight, before)
    # fitted (or loaded from a fitted stem's weights): nothing more to ask for
    assert model.features[0].fitted and model.init_images == 0
    reloaded = models.build_model("airbench_m_whiten", num_classes=NUM_CLASSES)
    reloaded.load_state_dict(model.state_dict())
    assert reloaded.init_images == 0


def test_prior_bias_without_bias_fails_clearly() -> None:
    with pytest.raises(ValueError, match="maxvit_t"):
        models.build_model("maxvit_t", num_classes=3, prior_bias=0.1)


# --- head options: --head cosine, --dropout, --pooling avgmax ---------------------------------------------------

HEAD_MODELS = [("small_cnn", 32), ("resnet18", 64), ("mobilenet_v3_small", 64), ("timm/resnet18", 64)]
HEAD_OPTIONS = {
    "cosine": {"head": "cosine"},
    "dropout": {"dropout": 0.35},
    "avgmax": {"pooling": "avgmax"},
    "all": {"head": "cosine", "dropout": 0.35, "pooling": "avgmax"},
}
# Where each model keeps the dropout right before its classifier, and the Linear its pooled features enter.
DROPOUT_SITE = {"small_cnn": lambda m: m.dropout.p, "resnet18": lambda m: m.fc.drop_rate,
                "mobilenet_v3_small": lambda m: m.classifier[2].p, "timm/resnet18": lambda m: m.drop_rate}
POOLED_LINEAR = {"small_cnn": (lambda m: m.fc, 128), "resnet18": (lambda m: m.fc, 512),
                 "mobilenet_v3_small": (lambda m: m.classifier[0], 576), "timm/resnet18": (lambda m: m.fc, 512)}


def classifier_input_and_output(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seen = {}
    hook = models.get_classifier(model).register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        out = model(x)
    hook.remove()
    return seen["x"], out


@pytest.mark.parametrize("option", HEAD_OPTIONS)
@pytest.mark.parametrize(("name", "size"), HEAD_MODELS)
def test_head_options(name: str, size: int, option: str, tmp_path) -> None:
    from config import Config
    from engine.components import model_from_checkpoint
    from utils.checkpoint import Checkpoint

    options = HEAD_OPTIONS[option]
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=NUM_CLASSES, cosine_scale=16.0, **options).eval()
    x = torch.randn(2, 3, size, size)
    features, out = classifier_input_and_output(model, x)
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
    classifier = models.get_classifier(model)
    if options.get("head") == "cosine":
        assert isinstance(classifier, models.CosineLinear) and classifier.bias is None
        cosines = nn.functional.normalize(features, dim=1) @ nn.functional.normalize(classifier.weight, dim=1).T
        assert torch.allclose(out, 16.0 * cosines, atol=1e-5)  # inference output is scale * cos(theta)
    if "dropout" in options:
        assert DROPOUT_SITE[name](model) == 0.35
    pooled_linear, channels = POOLED_LINEAR[name]
    assert pooled_linear(model).in_features == channels * (2 if options.get("pooling") == "avgmax" else 1)
    # export: traced and frozen like engine/export.py
    with torch.no_grad():
        exported = torch.jit.freeze(torch.jit.trace(model, x))
        assert torch.allclose(exported(x), out, atol=1e-5)
    # a checkpoint's config rebuilds the same architecture (evaluation, export and resume rely on it)
    cfg = Config(model=name, arc_scale=16.0, channels_last=False, **options)
    ckpt = Checkpoint(model=model.state_dict(), class_names=[str(i) for i in range(NUM_CLASSES)],
                      config=cfg.to_dict(), preprocessing={})
    rebuilt = model_from_checkpoint(ckpt, cfg, torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out)


@pytest.mark.parametrize("name", models.list_models(source="registry"))
def test_every_registered_model_takes_the_head_options(name: str) -> None:
    model = models.build_model(name, num_classes=NUM_CLASSES, **HEAD_OPTIONS["all"]).eval()
    assert isinstance(models.get_classifier(model), models.CosineLinear)
    assert any(isinstance(m, models.AdaptiveAvgMaxPool2d) for m in model.modules())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, NUM_CLASSES)


def test_margin_criterion_builds_the_cosine_head_from_a_checkpoint_config() -> None:
    from engine.components import model_options
    from config import Config

    # head None in the config: resolved from the criterion, as for checkpoints written before --head existed
    assert model_options(Config(criterion="arcface"))["head"] == "cosine"
    assert model_options(Config(criterion="softmax"))["head"] == "linear"
    assert model_options(Config(criterion="amsoftmax", arc_scale=12.0))["cosine_scale"] == 12.0


def test_avgmax_pool_and_dropout_linear() -> None:
    x = torch.arange(8.0).view(1, 2, 2, 2)
    assert models.AdaptiveAvgMaxPool2d()(x).flatten().tolist() == [1.5, 5.5, 3.0, 7.0]
    layer = models.DropoutLinear(1000, 1, bias=False, drop_rate=0.5)
    nn.init.ones_(layer.weight)
    torch.manual_seed(0)
    # inverted dropout: about half the inputs kept, scaled by 2, so the sum stays near 1000 in training
    assert layer.train()(torch.ones(1, 1000)).item() == pytest.approx(1000, rel=0.1)
    assert layer.eval()(torch.ones(1, 1000)).item() == 1000


@pytest.mark.parametrize(("name", "options", "message"), [
    ("densenet121", {"pooling": "avgmax"}, "densenet121 has no global average pooling module"),
    ("vgg11", {"pooling": "avgmax"}, r"vgg11's avgpool pools to \(7, 7\)"),
    ("convnext_tiny", {"pooling": "avgmax"}, "convnext_tiny's pooled features go into 'classifier.0', a LayerNorm2d"),
    ("ghostnet_100", {"pooling": "avgmax"}, "timm's ghostnet_100 cannot be built with --pooling avgmax"),
    ("squeezenet1_1", {"head": "cosine"}, "squeezenet1_1's final layer 'classifier.1' is a Conv2d"),
    ("small_cnn", {"head": "arc"}, r"unknown head 'arc'; choose one of \['linear', 'cosine'\]"),
    ("small_cnn", {"pooling": "max"}, r"unknown pooling 'max'; choose one of \['avg', 'avgmax'\]"),
    ("small_cnn", {"dropout": 1.0}, r"--dropout must be in \[0, 1\)"),
    ("small_cnn", {"head": "cosine", "prior_bias": 0.1}, "the cosine head has none"),
])
def test_unsupported_head_options_fail_naming_the_model(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        models.build_model(name, num_classes=NUM_CLASSES, **options)


def test_pretrained_skips_the_head_of_another_shape_with_head_options(tmp_path) -> None:
    source = models.build_model("resnet18", num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    with pytest.warns(UserWarning, match=r"fc\.weight: file \(10, 512\) vs model \(7, 1024\)"):
        model = models.build_model("resnet18", num_classes=NUM_CLASSES, pretrained=str(path), **HEAD_OPTIONS["all"])
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    # --dropout alone keeps the classifier's parameter names, so a same-shaped head still loads
    model = models.build_model("resnet18", num_classes=10, pretrained=str(path), dropout=0.2)
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_bn_momentum_sets_every_batchnorm_and_is_checked() -> None:
    def momenta(model: nn.Module) -> set[float]:
        return {m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    assert momenta(models.build_model("mobilenet_v3_small", num_classes=3)) == {0.01}  # torchvision's own
    assert momenta(models.build_model("mobilenet_v3_small", num_classes=3, bn_momentum=0.1)) == {0.1}
    assert momenta(models.build_model("small_cnn", num_classes=3, bn_momentum=0.3)) == {0.3}
    with pytest.raises(ValueError, match="--bn_momentum must be in"):
        models.build_model("small_cnn", num_classes=3, bn_momentum=0)



def test_batchnorm_lag_warning_for_slow_momentum_in_a_short_run() -> None:
    from models.registry import batchnorm_lag_warning

    slow = models.build_model("mobilenet_v3_small", num_classes=3)  # momentum 0.01
    assert "--bn_momentum 0.1" in batchnorm_lag_warning(slow, "mobilenet_v3_small", steps=468)
    assert batchnorm_lag_warning(slow, "mobilenet_v3_small", steps=2000) is None
    fast = models.build_model("mobilenet_v3_small", num_classes=3, bn_momentum=0.1)
    assert batchnorm_lag_warning(fast, "mobilenet_v3_small", steps=50) is None


def test_count_macs_leaves_the_model_and_the_rng_alone() -> None:
    """The training log's compute figure: thop's count on a copy (no total_ops buffers in the checkpoint), with a
    zero input (the global RNG, which seeds training, is not drawn from)."""
    from models.complexity import count_macs

    model = models.build_model("resnet18", num_classes=10)
    keys = set(model.state_dict())
    state = torch.get_rng_state()
    macs = count_macs(model, (224, 224))
    assert torch.equal(torch.get_rng_state(), state) and set(model.state_dict()) == keys
    assert 1.8e9 < macs < 1.85e9  # the main seed's table: resnet18 1820 M at 224 px
    assert count_macs(model, (32, 32)) == pytest.approx(macs * (32 / 224) ** 2, rel=0.02)
