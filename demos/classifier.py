"""Classify images with an exported model only: no training code, no size or normalisation flags.

    python demos/classifier.py checkpoints/RUN/best.torchscript.pt path/to/image.png
    python demos/classifier.py MODEL path/to/folder --topk 3 --json

The model file carries its class names and preprocessing; images go through the same letterbox code as
training (dataloader/preprocess.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, like `cd demos`
from dataloader.preprocess import IMAGE_EXTENSIONS, Preprocessing, load_image_tensor  # noqa: E402


def load_exported(path: str | Path) -> tuple[torch.jit.ScriptModule, list[str], Preprocessing]:
    extra = {"class_names.json": "", "preprocessing.json": ""}
    if not Path(path).is_file():
        raise SystemExit(f"model file {path} not found; export one with: python main.py --jit --resume CKPT")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated, still supported
        model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra["class_names.json"]:
        raise SystemExit(f"{path} has no embedded class names; was it exported with `main.py --jit`?")
    return model.eval(), json.loads(extra["class_names.json"]), Preprocessing.from_dict(
        json.loads(extra["preprocessing.json"]))


def list_images(target: str | Path) -> list[Path]:
    target = Path(target)
    if target.is_file():
        return [target]
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            return files
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {target}")
    raise SystemExit(f"{target} is neither an image file nor a folder")


@torch.inference_mode()
def classify(model, class_names: list[str], preprocessing: Preprocessing, images: list[Path], topk: int,
             batch_size: int = 32) -> list[dict]:
    results = []
    k = min(topk, len(class_names))
    for start in range(0, len(images), batch_size):
        paths = images[start:start + batch_size]
        batch = torch.stack([load_image_tensor(p, preprocessing) for p in paths])
        probs, labels = model(batch).topk(k, dim=1)
        for path, p, idx in zip(paths, probs.tolist(), labels.tolist()):
            results.append({"image": str(path),
                            "predictions": [{"class": class_names[i], "probability": round(q, 6)}
                                            for i, q in zip(idx, p)]})
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Classify images with a model exported by main.py --jit")
    parser.add_argument("model", help="TorchScript file written by `python main.py --jit --resume CKPT`")
    parser.add_argument("images", help="an image file or a folder (searched recursively)")
    parser.add_argument("--topk", type=int, default=1, help="classes to print per image")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text lines")
    args = parser.parse_args(argv)
    model, class_names, preprocessing = load_exported(args.model)
    results = classify(model, class_names, preprocessing, list_images(args.images), args.topk)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for item in results:
        preds = ", ".join(f"{p['class']} {p['probability']:.4f}" for p in item["predictions"])
        print(f"{item['image']}: {preds}")


if __name__ == "__main__":
    main()
