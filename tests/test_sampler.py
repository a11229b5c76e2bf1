"""dataloader.sampler: class-balanced sampling (`--balance`), its statistics, keys and DDP shards.

The DDP tests run real `torchrun --standalone --nproc_per_node 2` processes on CPU (gloo), each bounded by a
timeout.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataloader.datasets import ImageClassificationDataset, build_loader
from dataloader.sampler import ClassBalancedDistributedSampler, balanced_weights
from helpers import run, torchrun
from utils.checkpoint import load_checkpoint

COUNTS = {0: 100, 1: 20, 2: 5}  # a 20:4:1 imbalance
LABELS = [label for label, n in COUNTS.items() for _ in range(n)]


def test_balanced_draw_gives_every_class_the_same_share():
    sampler = ClassBalancedDistributedSampler(LABELS, num_replicas=1, rank=0, seed=3)
    drawn = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn.update(LABELS[key[0]] for key in sampler)
    total = sum(drawn.values())
    assert total == 20 * len(LABELS)
    for label in COUNTS:
        assert abs(drawn[label] / total - 1 / 3) < 0.03, drawn
    assert balanced_weights(LABELS)[LABELS.index(2)] == pytest.approx(1 / 15)  # 1 / (3 classes * 5 images)


def test_keys_are_index_epoch_and_each_epoch_is_a_new_draw():
    sampler = ClassBalancedDistributedSampler(LABELS, num_replicas=1, rank=0, seed=3)
    draws = []
    for epoch in (4, 5, 4):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert len(keys) == len(sampler) == len(LABELS)
        assert all(isinstance(k, tuple) and k[1] == epoch and 0 <= k[0] < len(LABELS) for k in keys)
        draws.append([k[0] for k in keys])
    assert draws[0] == draws[2] != draws[1]
    other_seed = ClassBalancedDistributedSampler(LABELS, num_replicas=1, rank=0, seed=4)
    other_seed.set_epoch(4)
    assert [k[0] for k in other_seed] != draws[0]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_disjoint_equal_shards_of_one_draw(world):
    labels = LABELS[:-1]  # 124 samples: not a multiple of 3
    samplers = [ClassBalancedDistributedSampler(labels, num_replicas=world, rank=r, seed=1) for r in range(world)]
    for s in samplers:
        s.set_epoch(7)
    shards = [[k[0] for k in s] for s in samplers]
    per_rank = -(-len(labels) // world)
    assert all(len(shard) == per_rank for shard in shards)
    interleaved = [shards[p % world][p // world] for p in range(per_rank * world)]
    assert interleaved == samplers[0].draw(7).tolist()  # every position of the draw on exactly one rank
    with pytest.raises(ValueError, match="rank 3"):
        ClassBalancedDistributedSampler(labels, num_replicas=3, rank=3)


def make_images(root: Path, counts: dict[int, int]) -> list[tuple[str, int]]:
    samples = []
    for label, n in counts.items():
        for i in range(n):
            path = root / f"{label}_{i}.png"
            cv2.imwrite(str(path), np.full((10, 14, 3), 40 + 60 * label, dtype=np.uint8))
            samples.append((str(path), label))
    return samples


def test_build_loader_with_balance(tmp_path):
    dataset = ImageClassificationDataset(make_images(tmp_path, {0: 30, 1: 6}), ["a", "b"], image_size=8, seed=2)
    loader = build_loader(dataset, batch_size=4, workers=0, train=True, seed=2, balance=True)
    assert isinstance(loader.sampler, ClassBalancedDistributedSampler) and loader.drop_last
    labels = Counter()
    for epoch in range(6):
        loader.sampler.set_epoch(epoch)
        for images, batch_labels, indices in loader:
            assert images.shape == (4, 3, 8, 8)
            labels.update(batch_labels.tolist())
    assert abs(labels[1] / sum(labels.values()) - 0.5) < 0.1  # 6 of 36 images, drawn half the time
    with pytest.raises(ValueError, match="evaluation must see every sample once"):
        build_loader(dataset, batch_size=4, workers=0, train=False, seed=2, balance=True)


DDP_SCRIPT = """
import json, sys
from dataloader.datasets import ImageClassificationDataset, build_loader
from dataloader.mix import build_batch_augment
from utils.distributed import cleanup_distributed, init_distributed, reduce_sum

samples, out = json.loads(sys.argv[1]), sys.argv[2]
info = init_distributed("cpu")
dataset = ImageClassificationDataset([tuple(s) for s in samples], ["a", "b", "c"], image_size=8, seed=4, aug="basic")
loader = build_loader(dataset, batch_size=4, workers=1, train=True, seed=4, rank=info.rank,
                      world_size=info.world_size, balance=True)
augment = build_batch_augment(image_size=(8, 8), num_classes=3, seed=4, rank=info.rank, multi_scale=True)
result = {}
for epoch in (0, 1):
    loader.sampler.set_epoch(epoch)
    result[epoch] = {"keys": list(loader.sampler), "batches": [idx.tolist() for _, _, idx in loader],
                     "shapes": [augment.shape_for(epoch, step) for step in range(len(loader))]}
steps = reduce_sum([len(loader)], info.device)[0]  # a real collective over the gloo group
json.dump({"rank": info.rank, "world": info.world_size, "steps_all_ranks": steps, "epochs": result},
          open(f"{out}/rank{info.rank}.json", "w"))
cleanup_distributed()
"""


def test_two_real_processes_get_disjoint_shards_of_the_same_draw(tmp_path):
    samples = make_images(tmp_path, {0: 24, 1: 6, 2: 3})  # 33 images: 17 keys per rank
    script = tmp_path / "ddp_balance.py"
    script.write_text(DDP_SCRIPT)
    torchrun(2, [json.dumps(samples), str(tmp_path)], script=str(script))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["steps_all_ranks"] == 8  # 4 full batches each
    reference = ClassBalancedDistributedSampler([label for _, label in samples], num_replicas=2, rank=0, seed=4)
    for epoch in ("0", "1"):
        shards = [[key[0] for key in r["epochs"][epoch]["keys"]] for r in ranks]
        assert all(key[1] == int(epoch) for r in ranks for key in r["epochs"][epoch]["keys"])
        # copies of an index are numbered across the whole draw, so no two keys of the epoch are equal
        all_keys = [tuple(key) for r in ranks for key in r["epochs"][epoch]["keys"]]
        assert len(set(all_keys)) == len(all_keys)
        assert len(shards[0]) == len(shards[1]) == 17
        interleaved = [shards[p % 2][p // 2] for p in range(34)]
        assert interleaved == reference.draw(int(epoch)).tolist()  # one draw, each position on one rank
        for r, shard in zip(ranks, shards):
            assert sum(r["epochs"][epoch]["batches"], []) == shard[:16]  # the loader serves exactly those keys
        assert ranks[0]["epochs"][epoch]["shapes"] == ranks[1]["epochs"][epoch]["shapes"]
    assert ranks[0]["epochs"]["0"]["keys"] != ranks[0]["epochs"]["1"]["keys"]  # reseeded per epoch


def test_torchrun_training_with_every_augmentation_and_sampling_option(tmp_path):
    data = tmp_path / "digits"
    run([sys.executable, "-m", "dataloader.prepare", "digits", "--out", str(data), "--limit", "40"])
    torchrun(2, ["--data", str(data), "--image_size", "32", "32", "-b", "8", "-j", "1", "--epochs", "1",
              "--warmup", "0", "--device", "cpu", "--no-amp", "--no-channels_last",
              "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs"), "--name", "ddp",
              "--aug", "trivialaugment,gridmask", "--mixup", "--cutmix", "--ricap", "--mix_prob", "0.9",
              "--multi_scale", "--balance"])
    ckpt = load_checkpoint(tmp_path / "ck/ddp/last.pth")
    assert ckpt.config["balance"] and ckpt.config["multi_scale"] and ckpt.config["ricap"] == 0.3
    assert np.isfinite(ckpt.metrics["train_loss"]) and 0 <= ckpt.metrics["train_top1"] <= 100


def test_repeated_draws_get_their_own_augmentation():
    """With replacement a rare-class image appears several times per epoch; each copy is numbered, and the
    numbered copies are augmented differently (the first copy keeps the (seed, epoch, index) augmentation)."""
    from dataloader.augment import build_augmentation
    from dataloader.sampler import occurrence_numbers

    assert occurrence_numbers(np.array([5, 3, 5, 5, 3, 9])).tolist() == [0, 0, 1, 2, 1, 0]
    sampler = ClassBalancedDistributedSampler(LABELS, num_replicas=1, rank=0, seed=3)
    keys = list(sampler)
    repeated = [k for k in keys if k[2] > 0]
    assert repeated, "the imbalanced LABELS must produce repeats"
    pipeline = build_augmentation("basic,erasing")
    image = np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    index = repeated[0][0]
    first = pipeline(image, seed=1, epoch=0, index=index)
    assert np.array_equal(first, pipeline(image, seed=1, epoch=0, index=index, draw=0))
    assert not np.array_equal(first, pipeline(image, seed=1, epoch=0, index=index, draw=1))
