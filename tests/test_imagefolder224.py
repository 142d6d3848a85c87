"""``imagenet_style`` data (docs/models.md, "Data"): ImageFolder or manifests at ImageNet-style resolution.

A tiny ImageFolder is cut from the offline Tiny-ImageNet mini into ``tmp_path``. Checked: the storage side and the
decode-once vs streaming decision (and its log line); the evaluation transform is torchvision's Resize + CenterCrop +
Normalize; both paths give identical evaluation *and* training tensors; manifests (CSV, parquet, Tiny-ImageNet's
val annotations) list the same rows as the folders; one epoch of distillation at 224 px on both paths.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cktf.data import ArrayDataset, BatchLoader, DataConfig, StreamDataset, StreamLoader, load_splits, make_loader
from cktf.data.imagenet_style import choose_path, list_split, object_store_budget, storage_side
from cktf.data.manifest import read_manifest
from cktf.data.spec import IMAGENET_MEAN, IMAGENET_STD
from cktf.data.stream import decode_on_device
from cktf.errors import ConfigError, DataNotFoundError

TINY = Path("tiny-imagenet-200-mini") / "tiny-imagenet-200"
CLASSES, N_TRAIN, N_VAL = 3, 8, 4


@pytest.fixture(scope="module")
def tiny_folder(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/train/<wnid>/*.JPEG`` (8 per class) and ``<tmp>/val/<wnid>/*.JPEG`` (4 per class), 3 classes."""
    src = data_root / TINY
    if not src.is_dir():
        pytest.skip(f"no Tiny-ImageNet mini at {src}")
    out = tmp_path_factory.mktemp("folder")
    wnids = sorted(p.name for p in (src / "train").iterdir())[:CLASSES]
    for w in wnids:
        (out / "train" / w).mkdir(parents=True)
        for f in sorted((src / "train" / w / "images").iterdir())[:N_TRAIN]:
            shutil.copy(f, out / "train" / w / f.name)
    taken = dict.fromkeys(wnids, 0)
    for line in (src / "val" / "val_annotations.txt").read_text().splitlines():
        name, w = line.split("\t")[:2]
        if w in taken and taken[w] < N_VAL:
            (out / "val" / w).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "val" / "images" / name, out / "val" / w / name)
            taken[w] += 1
    return out


def _splits(root: Path, size: int, budget_gb: float, monkeypatch: pytest.MonkeyPatch, **extra):
    monkeypatch.setenv("CKTF_OBJECT_STORE_GB", str(budget_gb))
    cfg = DataConfig(dataset="imagenet_style", root=str(root), image_size=size, val_fraction=0.0, **extra)
    return load_splits(cfg, progress=False)


def test_storage_side_and_the_decision() -> None:
    assert [storage_side(s) for s in (224, 64, 96, 160)] == [256, 73, 110, 183]
    small = choose_path(1000, 256, budget_bytes=10**9)
    assert not small.stream and small.nbytes == 1000 * 256 * 256 * 3 and "fit the object-store budget" in small.reason
    big = choose_path(1_281_167, 256, budget_bytes=40 * 10**9)
    assert big.stream and "251.89 GB exceed the object-store budget of 40.00 GB" in big.reason
    assert object_store_budget() > 0


def test_decode_once_and_streaming_are_chosen_and_logged(tiny_folder, monkeypatch, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="cktf"):
        once = _splits(tiny_folder, 64, 10.0, monkeypatch)
    assert isinstance(once.train, ArrayDataset) and once.train.images.shape == (CLASSES * N_TRAIN, 73, 73, 3)
    assert once.spec.image_size == 64 and once.spec.eval_resize == 73 and once.spec.train_aug == "rrc_flip"
    assert (once.spec.mean, once.spec.std) == (IMAGENET_MEAN, IMAGENET_STD) and once.num_classes == CLASSES
    assert "decoded once at 73 px and shared" in caplog.text and "fit the object-store budget" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cktf"):
        stream = _splits(tiny_folder, 64, 1e-6, monkeypatch)  # a budget of 1 kB: too small
    assert isinstance(stream.train, StreamDataset) and isinstance(stream.test, StreamDataset)
    assert "streamed from" in caplog.text and "exceed the object-store budget" in caplog.text
    assert stream.spec == once.spec
    np.testing.assert_array_equal(stream.train.targets, once.train.targets)
    held = _splits(tiny_folder, 64, 1e-6, monkeypatch, **{"train_subset": 6})
    assert isinstance(held.train, StreamDataset) and len(held.train) == 6


def test_eval_transform_is_torchvision_resize_center_crop_normalize(tiny_folder, monkeypatch) -> None:
    from PIL import Image
    from torchvision.transforms import v2

    once = _splits(tiny_folder, 64, 10.0, monkeypatch)
    loader = BatchLoader(once.test, once.spec, batch_size=5, train=False)
    got = next(iter(loader))["image"]
    ref_t = v2.Compose(
        [
            v2.Resize(73),
            v2.CenterCrop(64),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    files, _, _, _ = list_split(tiny_folder, "test")
    ref = torch.stack([ref_t(Image.open(f).convert("RGB")) for f in files[:5]])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_both_paths_give_identical_tensors(tiny_folder, monkeypatch, workers: int) -> None:
    once = _splits(tiny_folder, 64, 10.0, monkeypatch)
    stream = _splits(tiny_folder, 64, 1e-6, monkeypatch)
    for train in (False, True):
        a = BatchLoader(once.train if train else once.test, once.spec, batch_size=5, train=train, seed=3)
        b = StreamLoader(
            stream.train if train else stream.test, stream.spec, batch_size=5, train=train, seed=3, workers=workers
        )
        assert len(a) == len(b)
        for epoch in (0, 1):
            a.set_epoch(epoch)
            b.set_epoch(epoch)
            pairs = list(zip(a, b))
            assert len(pairs) == len(a)
            for x, y in pairs:
                assert x["image"].shape == (len(x["index"]), 3, 64, 64)
                assert torch.equal(x["index"], y["index"]) and torch.equal(x["target"], y["target"])
                assert torch.equal(x["image"], y["image"]), f"train={train} epoch={epoch}"
    assert isinstance(make_loader(stream.train, stream.spec, batch_size=4, train=False), StreamLoader)
    assert type(make_loader(once.train, once.spec, batch_size=4, train=False, workers=3)) is BatchLoader


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29's io decoders (what decodes on a GPU)
def test_device_decode_is_close_to_the_cpu_path(tiny_folder, monkeypatch) -> None:
    from torchvision.io import read_file

    stream = _splits(tiny_folder, 64, 1e-6, monkeypatch)
    files = stream.test.files[:4]
    on_device = decode_on_device([read_file(f) for f in files], 73, torch.device("cpu"))  # the CUDA code path
    from cktf.data.decode import load_rgb

    cpu = torch.from_numpy(np.stack([load_rgb(f, 73) for f in files]))
    assert on_device.shape == cpu.shape == (4, 73, 73, 3) and on_device.dtype == torch.uint8
    assert (on_device.float() - cpu.float()).abs().mean() < 3.0  # libjpeg vs PIL decoders, then the resize
    dev = StreamLoader(stream.test, stream.spec, batch_size=4, train=False, workers=0, decode="device")
    assert next(iter(dev))["image"].shape == (4, 3, 64, 64)


def test_manifests_list_the_same_rows(tiny_folder, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    train = list_split(tiny_folder, "train")
    test = list_split(tiny_folder, "test", train[2])
    root = tmp_path / "manifests"
    root.mkdir()
    rows = []
    for split, (files, targets, classes, _) in (("train", train), ("val", test)):
        lines = ["path,label"] + [f"{Path(f).relative_to(tiny_folder)},{classes[t]}" for f, t in zip(files, targets)]
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
        rows += [(str(f), classes[t], split) for f, t in zip(files, targets)]
    for src in (root, tmp_path / "all.parquet"):
        if src.suffix == ".parquet":
            pq.write_table(pa.table({k: [r[i] for r in rows] for i, k in enumerate(("path", "label", "split"))}), src)
        else:  # the CSVs' relative paths start from their folder: point it at the images
            for f in tiny_folder.iterdir():
                (root / f.name).symlink_to(f)
        got_train, got_test = list_split(src, "train"), list_split(src, "test", train[2])
        assert [Path(f).resolve() for f in got_train[0]] == [Path(f).resolve() for f in train[0]]
        np.testing.assert_array_equal(got_train[1], train[1])
        np.testing.assert_array_equal(got_test[1], test[1])
        assert got_train[2] == train[2]
    (root / "bad.csv").write_text("file,klass\nx.jpg,a\n")
    with pytest.raises(ConfigError, match="must name the columns path and label"):
        read_manifest(root / "bad.csv")
    (root / "gone.csv").write_text("path,label\nnope.jpg,a\n")
    with pytest.raises(ConfigError, match="names a file that does not exist"):
        read_manifest(root / "gone.csv")
    with pytest.raises(DataNotFoundError, match="imagenet_style split 'train' not found"):
        list_split(tmp_path / "empty_dir_that_has_nothing", "train")


def test_tiny_imagenet_val_annotations_are_a_manifest(data_root: Path) -> None:
    root = data_root / TINY
    if not root.is_dir():
        pytest.skip(f"no Tiny-ImageNet mini at {root}")
    train = list_split(root, "train")
    files, targets, classes, source = list_split(root, "test", train[2])
    assert len(classes) == 200 and len(files) == 10_000 and source == root / "val"
    assert np.bincount(targets).tolist() == [50] * 200


@pytest.mark.parametrize("path_budget", [10.0, 1e-6], ids=["decode_once", "stream"])
def test_one_epoch_at_224_on_both_paths(tiny_folder, monkeypatch, path_budget: float) -> None:
    from cktf.data import ContrastConfig
    from cktf.distillers import DistillContext, build_distiller
    from cktf.models import create_model

    splits = _splits(tiny_folder, 224, path_budget, monkeypatch)
    assert isinstance(splits.train, StreamDataset) == (path_budget < 1)
    torch.manual_seed(0)
    student, teacher = create_model("tv:mobilenet_v3_small", CLASSES), create_model("tv:resnet18", CLASSES)
    ctx = DistillContext(CLASSES, len(splits.train), 224)
    distiller = build_distiller("cktf", student, teacher, {"nce_k": 4, "feat_dim": 16}, ctx)
    assert distiller.run_params() == {"cktf/pairing": "generalised"}
    loader = make_loader(splits.train, splits.spec, batch_size=8, train=True, contrast=ContrastConfig(k=4), workers=2)
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.01, momentum=0.9)
    distiller.train()
    steps = 0
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 224, 224)
        loss = sum(distiller(batch).losses.values())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    assert steps == len(loader) == 3
    distiller.eval()
    with torch.no_grad():
        for batch in make_loader(splits.test, splits.spec, batch_size=8, train=False, workers=2):
            assert distiller.student(batch["image"]).shape == (len(batch["index"]), CLASSES)


def test_the_budget_field_chooses_the_path_and_streamed_splits_travel_as_file_lists(tiny_folder, monkeypatch) -> None:
    """``data.object_store_gb`` decides (over ``$CKTF_OBJECT_STORE_GB``); a streamed study's splits cross the object
    store as file lists (no pixels) and the trial's loaders give the driver's very batches; the teacher cache's
    digest of a streamed split stands on its files."""
    import dataclasses
    import pickle

    from cktf.train.teacher_cache import data_digest
    from cktf.tune.run.shared import shared_bytes, splits_from_shared, splits_to_shared

    cfg = DataConfig(dataset="imagenet_style", root=str(tiny_folder), image_size=64, val_fraction=0.25)
    monkeypatch.setenv("CKTF_OBJECT_STORE_GB", "1e-9")
    assert isinstance(load_splits(cfg.replace(object_store_gb=10.0), progress=False).train, ArrayDataset)
    monkeypatch.setenv("CKTF_OBJECT_STORE_GB", "10")
    splits = load_splits(cfg.replace(object_store_gb=1e-9), progress=False)
    assert all(isinstance(ds, StreamDataset) for ds in (splits.train, splits.val, splits.test))
    shared = splits_to_shared(splits)
    assert not any(k.endswith("/images") for k in shared) and shared["train/side"] == 73
    assert shared_bytes(shared) == 8 * (CLASSES * N_TRAIN + CLASSES * N_VAL), "the targets alone: no pixels"
    back = splits_from_shared(pickle.loads(pickle.dumps(shared)))  # what a trial's ray.get gives
    same = dataclasses.replace(back.spec, load=None) == dataclasses.replace(splits.spec, load=None)  # a new partial
    assert same and back.contrast_replace == splits.contrast_replace
    for name in ("train", "val", "test"):
        a, b = getattr(splits, name), getattr(back, name)
        assert isinstance(b, StreamDataset) and b.files == a.files and b.side == a.side and b.classes == a.classes
        np.testing.assert_array_equal(a.targets, b.targets)
    for train in (True, False):
        x = make_loader(splits.train, splits.spec, batch_size=5, train=train, seed=2, workers=0)
        y = make_loader(back.train, back.spec, batch_size=5, train=train, seed=2, workers=0)
        for bx, by in zip(x, y, strict=True):
            assert torch.equal(bx["image"], by["image"]) and torch.equal(bx["index"], by["index"])
    digest = data_digest(splits)
    assert digest == data_digest(back)
    assert digest != data_digest(load_splits(cfg.replace(object_store_gb=1e-9, image_size=32), progress=False))
    with pytest.raises(ConfigError, match="only imagenet_style data may stream") as err:
        DataConfig(dataset="cifar10", decode="device")
    assert err.value.field == "data.decode"
