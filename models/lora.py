"""LoRA adapters (through ``peft``) and stage-wise freezing: which layers of a model fine-tuning touches.

``add_lora`` injects low-rank adapters into a built model in place (``peft.inject_adapter_in_model``: the model
keeps its class, attribute names and head; each adapted layer becomes a peft layer holding ``base_layer``,
``lora_A`` and ``lora_B``). ``merge_lora`` folds them back (W + B A x alpha / r) into plain layers, so what comes out
is the original architecture with its original state-dict keys: every export and the evaluation take it as it is.

``model_stages`` lists the stages of resnet-, timm- and torchvision-style models for ``--freeze_stages``.
peft is imported lazily: runs without ``--lora`` do not pay for importing it (and transformers with it).
"""
from __future__ import annotations

import fnmatch
import re

from torch import nn

from .heads import find_classifier_name

ADAPTER_MARK = ".lora_"  # every adapter tensor's name holds it: conv1.lora_A.default.weight


def adaptable_layers(model: nn.Module) -> list[str]:
    """Names of the layers peft's LoRA can adapt here: Linear and non-grouped Conv2d, the classifier excluded (it
    trains in full), and so is nn.MultiheadAttention's out_proj."""
    head = find_classifier_name(model)
    # nn.MultiheadAttention reads out_proj.weight itself (torchvision's ViT): an adapter there would be bypassed.
    inside_attention = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    return [name for name, m in model.named_modules()
            if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))
            and id(m) not in inside_attention and name != head and not name.startswith(head + ".")]


def default_lora_targets(model: nn.Module) -> list[str]:
    """The layers ``--lora`` adapts without ``--lora_targets``: the attention ``qkv`` projections of a
    transformer (timm ViT, DeiT...), else every convolution and linear layer but the classifier (CNNs)."""
    layers = adaptable_layers(model)
    qkv = [name for name in layers if name.endswith(".qkv")]
    return qkv or layers


def resolve_lora_targets(model: nn.Module, patterns: list[str] | None, model_name: str) -> list[str]:
    """Layer names from ``--lora_targets`` patterns (fnmatch over module names, e.g. ``layer4.*`` or ``*.qkv``), or
    the family default when None. Raises ValueError naming the flag when a pattern matches nothing."""
    if not patterns:
        return default_lora_targets(model)
    layers = adaptable_layers(model)
    chosen = [name for name in layers if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in layers):
            raise ValueError(f"--lora_targets {pattern!r} matches no Linear/Conv2d layer of {model_name} (the "
                             f"classifier trains in full anyway); its layers are e.g. {', '.join(layers[:6])}")
    return chosen


def add_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float, targets: list[str]) -> nn.Module:
    """Inject LoRA adapters of ``rank`` into the layers named ``targets`` (in place; returns ``model``).

    Only the adapters (and, set by the caller, the head) require grad afterwards. ``lora_B`` starts at zero, so the
    adapted model computes exactly what the base model does until it trains.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not targets:
        raise ValueError("--lora: no layer to adapt")
    # A regex over full module names: a plain list would match by suffix, so "conv1" would also adapt layer1.0.conv1.
    pattern = "^(" + "|".join(re.escape(name) for name in targets) + ")$"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
    return inject_adapter_in_model(config, model)


def has_lora(model: nn.Module) -> bool:
    return any(ADAPTER_MARK in name for name, _ in model.named_parameters())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and put the plain base layer back in its place (in place; returns
    ``model``): the original architecture and state-dict keys, computing the adapted function."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)  # refuses to produce non-finite weights
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    return model


def model_stages(model: nn.Module) -> list[str]:
    """Module names of the model's stages in forward order: ``layer1..layerN`` (torchvision and timm ResNets),
    ``stages.*`` (timm ConvNeXt, RegNet, CSPNet...), ``blocks.*`` (timm EfficientNet stages, ViT blocks) or
    ``features.*`` (torchvision MobileNet/EfficientNet/VGG, our small CNNs). [] when none of these exists."""
    children = dict(model.named_children())
    layers = [name for name in children if re.fullmatch(r"layer\d+", name)]
    if layers:
        return sorted(layers, key=lambda name: int(name[5:]))
    for container in ("stages", "blocks", "features"):
        if isinstance(children.get(container), (nn.Sequential, nn.ModuleList)):
            return [f"{container}.{name}" for name, _ in children[container].named_children()]
    return []


def stage_trainable(model: nn.Module, stages: int, model_name: str) -> set[str]:
    """``--freeze_stages K``: names of the parameters that still train, those registered after the first K stages
    (the deep stages, final norms and the head); the stem and the first K stages are frozen."""
    names = model_stages(model)
    if not names:
        raise ValueError(f"--freeze_stages: {model_name} has no stages this knows (layer1.., stages, blocks or "
                         "features); use --freeze or --lora")
    if not 1 <= stages <= len(names):
        raise ValueError(f"--freeze_stages must be between 1 and {len(names)}: {model_name} has {len(names)} "
                         f"stages ({', '.join(names)}), got {stages}")
    frozen_prefixes = tuple(name + "." for name in names[:stages])
    params = [name for name, _ in model.named_parameters()]
    last_frozen = max(i for i, name in enumerate(params) if name.startswith(frozen_prefixes))
    return set(params[last_frozen + 1:])


def adapter_keys(model: nn.Module, head: str) -> set[str]:
    """State-dict keys a LoRA run trains and its checkpoints hold: the adapters and the whole head."""
    return {key for key in model.state_dict() if ADAPTER_MARK in key or key.startswith(head + ".")}


def base_gaps(model: nn.Module, path: str, head: str) -> list[str]:
    """Keys of ``model`` outside the head that the weights file ``path`` does not supply (with the same shape): a
    LoRA checkpoint does not store the base, so every one of its tensors must come from the file."""
    from .pretrained import read_state_dict, strip_wrapper_prefixes

    state = model.state_dict()
    found = strip_wrapper_prefixes(read_state_dict(path), set(state))
    return [key for key, value in state.items() if not key.startswith(head + ".")
            and (key not in found or found[key].shape != value.shape)]


def load_adapter_state(model: nn.Module, weights: dict) -> None:
    """Load a LoRA checkpoint's tensors (adapters + head) into a model built from the base with ``add_lora``;
    every adapter tensor of the model must be among them. Raises ValueError naming the keys otherwise."""
    result = model.load_state_dict(weights, strict=False)
    missing = [key for key in result.missing_keys if ADAPTER_MARK in key]
    if result.unexpected_keys or missing or not any(ADAPTER_MARK in key for key in weights):
        raise ValueError(f"the LoRA weights do not fit the model (unexpected {result.unexpected_keys[:3]}, missing "
                         f"adapters {missing[:3]}); were they trained with other --lora_targets or another model?")
