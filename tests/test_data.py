"""Data layer on the real offline data: sources, cache, splits, augmentation, loader, contrastive negatives."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cktf.data import (
    DATASETS,
    ArrayDataset,
    BatchLoader,
    ContrastConfig,
    ContrastSampler,
    DataConfig,
    folders,
    load_splits,
    prepare,
)
from cktf.data import augment as aug
from cktf.data.imagefolder import channel_stats
from cktf.data.splits import holdout, stratified_pick
from cktf.data.stl10 import read_images
from cktf.errors import ConfigError, DataNotFoundError
from cktf.registry import UnknownNameError

DATA = Path(os.environ.get("CKTF_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CIFAR100 = DATA / "cifar-100-python-subset"
TINY = DATA / "tiny-imagenet-200-mini" / "tiny-imagenet-200"
CIFAR10 = DATA / "cifar10-jpeg"

needs_data = pytest.mark.skipif(not CIFAR10.is_dir(), reason=f"offline data not found at {DATA} (set CKTF_TEST_DATA)")


def _row_hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(im.tobytes()).hexdigest() for im in images}


# ----------------------------------------------------------------------------- sources


@needs_data
@pytest.mark.parametrize("root", [CIFAR100, CIFAR100 / "cifar-100-python", DATA])
def test_cifar100_subset_loads(root):
    spec = DATASETS.get("cifar100")
    train, test = spec.load(root, "train"), spec.load(root, "test")
    assert train.images.shape == (1117, 32, 32, 3) and test.images.shape == (916, 32, 32, 3)
    assert train.images.dtype == np.uint8 and train.targets.dtype == np.int64
    assert len(train.classes) == 100 and train.classes[:2] == ["apple", "aquarium_fish"]
    assert 0 <= train.targets.min() and train.targets.max() < 100
    assert (spec.num_classes, spec.image_size, spec.train_aug) == (100, 32, "crop_flip")


@needs_data
def test_cifar10_jpeg_test_split_loads():
    ds = DATASETS.get("cifar10").load(DATA, "test")
    assert ds.images.shape == (10000, 32, 32, 3)
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10
    assert np.bincount(ds.targets).tolist() == [1000] * 10
    assert ds.images.std() > 30  # real pixels, not zeros


@pytest.fixture(scope="session")
def tiny_small(tmp_path_factory) -> Path:
    """The official Tiny-ImageNet layout with 4 of the mini's classes (symlinks), for a fast decode."""
    if not TINY.is_dir():
        pytest.skip(f"tiny-imagenet mini not found at {TINY}")
    root = tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200"
    wnids = sorted(p.name for p in (TINY / "train").iterdir())[:4]
    (root / "train").mkdir(parents=True)
    (root / "val" / "images").mkdir(parents=True)
    for w in wnids:
        (root / "train" / w).symlink_to(TINY / "train" / w, target_is_directory=True)
    rows = [r for r in (TINY / "val" / "val_annotations.txt").read_text().splitlines() if r.split("\t")[1] in wnids]
    for r in rows:
        (root / "val" / "images" / r.split("\t")[0]).symlink_to(TINY / "val" / "images" / r.split("\t")[0])
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return root


def test_tiny_imagenet_official_layout_loads(tiny_small):
    spec = DATASETS.get("tiny_imagenet")
    train = spec.load(tiny_small.parent, "train")  # the folder that contains tiny-imagenet-200/
    test = spec.load(tiny_small, "test")  # or the tiny-imagenet-200 folder itself
    assert train.images.shape == (400, 64, 64, 3) and test.images.shape == (200, 64, 64, 3)
    assert train.classes == sorted(train.classes) and len(train.classes) == 4
    assert np.bincount(train.targets).tolist() == [100] * 4 and np.bincount(test.targets).tolist() == [50] * 4
    assert test.classes == train.classes
    assert (spec.image_size, spec.train_aug, spec.contrast_replace) == (64, "rrc_flip", True)


def test_stl10_binary_orientation(tmp_path):
    """torchvision reads ``*_X.bin`` as reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2) (CHW); we read the same as HWC."""
    rng = np.random.default_rng(0)
    chw = rng.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)  # [N, C, H, W] as torchvision returns them
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    chw.transpose(0, 1, 3, 2).tofile(folder / "train_X.bin")
    np.array([1, 10, 3], dtype=np.uint8).tofile(folder / "train_y.bin")
    chw[:2].transpose(0, 1, 3, 2).tofile(folder / "unlabeled_X.bin")
    np.testing.assert_array_equal(read_images(folder / "train_X.bin"), chw.transpose(0, 2, 3, 1))
    spec = DATASETS.get("stl10")
    train = spec.load(tmp_path, "train", cache_dir=tmp_path / "cache")
    assert train.targets.tolist() == [0, 9, 2]
    unl = DATASETS.get("stl10_unlabeled").load(tmp_path, "unlabeled", cache_dir=tmp_path / "cache")
    assert unl.targets.tolist() == [-1, -1] and not unl.labeled
    assert DATASETS.get("stl10_unlabeled").train_split == "unlabeled"


def test_decode_converts_grayscale_and_resizes(tmp_path):
    from PIL import Image

    from cktf.data.decode import decode_files

    Image.fromarray(np.full((8, 8), 77, dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    out = decode_files([tmp_path / "gray.png", tmp_path / "wide.png"], 8, progress=False)
    assert out.shape == (2, 8, 8, 3) and (out[0] == 77).all() and (out[1] == 0).all()


def _png_tree(root: Path, sizes: dict[str, list[tuple[int, int]]], splits=("train", "test")) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in splits:
        for cls, shapes in sizes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i, (w, h) in enumerate(shapes):
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


def test_imagefolder_sizes_and_cached_stats(tmp_path, monkeypatch):
    root = tmp_path / "folder"
    _png_tree(root, {"a": [(40, 40), (50, 30)], "b": [(40, 40)], "c": [(40, 40)] * 2})
    cfg = DataConfig(dataset="imagefolder", root=str(root), val_fraction=0, cache_dir=str(tmp_path / "c"))
    calls = []
    import cktf.data.imagefolder as imf

    monkeypatch.setattr(imf, "channel_stats", lambda images: calls.append(1) or channel_stats(images))
    splits = load_splits(cfg, progress=False)
    assert splits.train.images.shape == (5, 40, 40, 3)  # the 50x30 image resized + centre-cropped
    assert splits.spec.num_classes == 3 and splits.image_size == 40 and splits.spec.train_aug == "rrc_flip"
    mean, std = channel_stats(splits.train.images)
    assert splits.spec.mean == pytest.approx(tuple(mean)) and splits.spec.std == pytest.approx(tuple(std))
    assert splits.contrast_replace is True
    assert pickle.loads(pickle.dumps(splits)).spec.mean == splits.spec.mean
    load_splits(cfg, progress=False)
    assert len(calls) == 1  # mean/std come from the cache the second time
    small = load_splits(DataConfig(**{**cfg.__dict__, "image_size": 24}), progress=False)
    assert small.image_size == 24 and small.spec.train_aug == "crop_flip"
    assert small.test.images.shape[1:] == (24, 24, 3)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["cifar100", "cifar10", "tiny_imagenet", "stl10", "imagefolder"])
def test_missing_root_names_path_and_fix(tmp_path, name):
    root = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as exc:
        DATASETS.get(name).load(root, "train")
    msg = str(exc.value)
    assert str(root) in msg and f"cktf data prepare {name}" in msg and "\n" not in msg
    assert ("--download" in msg) == (name != "imagefolder")
    with pytest.raises(DataNotFoundError, match="cktf data prepare"):
        load_splits(DataConfig(dataset=name, root=str(root)))


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match="data.dataset: unknown dataset 'nope'"):
        DataConfig.parse({"dataset": "nope"}, "data")
    with pytest.raises(UnknownNameError):
        prepare("nope", ".")


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"val_fraction": -0.1}, "data.val_fraction"),
        ({"train_subset": 0}, "data.train_subset"),
        ({"test_subset": -5}, "data.test_subset"),
        ({"image_size": 64}, "data.image_size"),
        ({"contrast_mode": "loose"}, "data.contrast_mode"),
        ({"split_seed": -1}, "data.split_seed"),
    ],
)
def test_config_validation_names_field(kw, field):
    with pytest.raises(ConfigError) as exc:
        DataConfig.parse(kw, "data")
    assert exc.value.field == field


# ----------------------------------------------------------------------------- cache


def _small_jpeg_tree(dst: Path) -> Path:
    for split in ("train", "test"):
        for cls in ("airplane", "cat"):
            (dst / split / cls).mkdir(parents=True)
            for f in sorted((CIFAR10 / split / cls).iterdir())[:6]:
                shutil.copy2(f, dst / split / cls / f.name)
    return dst


@needs_data
def test_cache_hit_skips_decoding_and_changed_source_rereads(tmp_path, monkeypatch):
    root = _small_jpeg_tree(tmp_path / "src")
    cache = tmp_path / "cache"
    calls = []
    real = folders.decode_files
    monkeypatch.setattr(folders, "decode_files", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = sorted(p for p in root.rglob("*"))
    spec = DATASETS.get("cifar10")
    a = spec.load(root, "train", cache_dir=cache)
    b = spec.load(root, "train", cache_dir=cache)
    assert len(calls) == 1 and len(a) == 12
    np.testing.assert_array_equal(a.images, b.images)
    assert sorted(p for p in root.rglob("*")) == before  # nothing written into the data root
    assert len(list(cache.glob("cifar10-train-*.json"))) == 1
    victim = root / "train" / "cat" / sorted(os.listdir(root / "train" / "cat"))[0]
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: new mtime_ns
    spec.load(root, "train", cache_dir=cache)
    assert len(calls) == 2
    assert len(list(cache.glob("cifar10-train-*.json"))) == 1  # the stale entry was replaced
    (root / "train" / "cat" / "extra.jpg").write_bytes(victim.read_bytes())  # a new file
    c = spec.load(root, "train", cache_dir=cache)
    assert len(calls) == 3 and len(c) == 13


def test_cache_env_default(tmp_path, monkeypatch):
    from cktf.data.cache import cache_root

    monkeypatch.setenv("CKTF_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" and cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("CKTF_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "cktf"


# ----------------------------------------------------------------------------- splits


@needs_data
def test_val_split_disjoint_stratified_seeded():
    cfg = DataConfig(dataset="cifar100", root=str(CIFAR100), val_fraction=0.2, split_seed=3)
    s = load_splits(cfg)
    full = DATASETS.get("cifar100").load(CIFAR100, "train")
    assert len(s.train) + len(s.val) == len(full) and len(s.val) == round(0.2 * len(full))
    assert not _row_hashes(s.train.images) & _row_hashes(s.val.images)
    assert _row_hashes(s.train.images) | _row_hashes(s.val.images) == _row_hashes(full.images)
    again = load_splits(cfg)
    np.testing.assert_array_equal(again.val.images, s.val.images)
    other = load_splits(DataConfig(**{**cfg.__dict__, "split_seed": 4}))
    assert _row_hashes(other.val.images) != _row_hashes(s.val.images)
    assert s.contrast_replace is False and s.num_classes == 100 and s.image_size == 32
    back = pickle.loads(pickle.dumps(s))  # splits travel through Ray's object store
    assert back.spec == s.spec and np.array_equal(back.train.images, s.train.images)
    none = load_splits(DataConfig(**{**cfg.__dict__, "val_fraction": 0.0, "test_subset": 100}))
    assert none.val is None and len(none.train) == len(full) and len(none.test) == 100


def test_holdout_and_subsets_are_stratified():
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(10), [100] * 5 + [50] * 5)
    tr, va = holdout(targets, 0.1, rng)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(targets)
    assert np.bincount(targets[va]).tolist() == [10] * 5 + [5] * 5
    pick = stratified_pick(targets, 150, rng)
    assert len(pick) == 150 and len(set(pick)) == 150
    assert np.bincount(targets[pick]).tolist() == [20] * 5 + [10] * 5
    unl = stratified_pick(np.full(1000, -1), 100, rng)
    assert len(set(unl)) == 100


@needs_data
def test_train_subset_then_val():
    s = load_splits(DataConfig(dataset="cifar100", root=str(CIFAR100), train_subset=500, val_fraction=0.1))
    assert len(s.train) == 450 and len(s.val) == 50


# ----------------------------------------------------------------------------- augmentation


def _nchw(b=16, h=32, w=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    nhwc = torch.randint(1, 256, (b, h, w, 3), dtype=torch.uint8, generator=g)  # no zeros: padding is visible
    return nhwc.permute(0, 3, 1, 2)  # the loader's view of NHWC memory


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = _nchw()
    out = aug.random_crop_flip(x, 32, 4, torch.Generator().manual_seed(1), flip=False)
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.uint8
    padded = F.pad(x, (4, 4, 4, 4))
    offsets = []
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(padded[i, :, dy : dy + 32, dx : dx + 32], out[i])
        ]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 3 and any(o != (4, 4) for o in offsets)  # content really moves
    again = aug.random_crop_flip(x, 32, 4, torch.Generator().manual_seed(1), flip=False)
    assert torch.equal(out, again)


def test_flip_flips_and_shares_the_crop():
    x = _nchw(b=64)
    plain = aug.random_crop_flip(x, 32, 4, torch.Generator().manual_seed(5), flip=False)
    flipped = aug.random_crop_flip(x, 32, 4, torch.Generator().manual_seed(5), flip=True)
    same = [torch.equal(plain[i], flipped[i]) for i in range(64)]
    mirrored = [torch.equal(plain[i].flip(-1), flipped[i]) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 10 < sum(mirrored) < 54
    assert not torch.equal(flipped, aug.random_crop_flip(x, 32, 4, torch.Generator().manual_seed(6)))


def test_rrc_boxes_follow_torchvision_rules():
    g = torch.Generator().manual_seed(0)
    boxes = aug.rrc_boxes(5000, 64, 48, generator=g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 48).all()
    frac = h * w / (64 * 48)
    assert frac.min() > 0.07 and frac.max() <= 1.0
    assert (w / h).min() > 0.7 and (w / h).max() < 1.4
    assert torch.equal(boxes, aug.rrc_boxes(5000, 64, 48, generator=torch.Generator().manual_seed(0)))


def test_rrc_identity_box_and_interior_matches_torchvision():
    from torchvision.transforms.v2 import functional as TF

    x = _nchw(b=8, h=64, w=64)
    full = aug.random_resized_crop_flip(x, 64, scale=(1, 1), ratio=(1, 1), generator=torch.Generator(), flip=False)
    assert (full - x.float()).abs().max() < 1e-3
    g = torch.Generator().manual_seed(3)
    out = aug.random_resized_crop_flip(x, 64, generator=g, flip=False)
    boxes = aug.rrc_boxes(8, 64, 64, generator=torch.Generator().manual_seed(3))
    for i, (t, le, h, w) in enumerate(boxes.long().tolist()):
        ref = TF.resized_crop(x[i].float(), t, le, h, w, [64, 64], antialias=True)
        assert (ref - out[i])[:, 6:-6, 6:-6].abs().max() < 1e-3  # borders may reach half a pixel outside the box
    # a 96-pixel source (STL-10) goes through roi_align; same shape/dtype, deterministic
    big = _nchw(b=4, h=96, w=96)
    a = aug.random_resized_crop_flip(big, 64, generator=torch.Generator().manual_seed(0))
    b = aug.random_resized_crop_flip(big, 64, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 64, 64) and a.dtype == torch.float32 and torch.equal(a, b)


def test_rrc_separable_resampling_equals_grid_sample_with_flips():
    """The two-matmul resampling is bilinear ``grid_sample`` (border padding, pixel centres) on the box, mirrored."""
    x = _nchw(b=16, h=64, w=64).float()
    g = torch.Generator().manual_seed(4)
    boxes = aug.rrc_boxes(16, 64, 64, generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    top, left, bh, bw = boxes.unbind(1)
    theta = torch.zeros(16, 2, 3)
    theta[:, 0, 0] = torch.where(flips, -bw / 64, bw / 64)
    theta[:, 0, 2] = (2 * left + bw) / 64 - 1
    theta[:, 1, 1] = bh / 64
    theta[:, 1, 2] = (2 * top + bh) / 64 - 1
    grid = torch.nn.functional.affine_grid(theta, [16, 3, 48, 48], align_corners=False)
    ref = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = aug._resample_separable(x, boxes, 48, flips)
    assert 2 < int(flips.sum()) < 14 and (out - ref).abs().max() < 2e-3  # fp32 grid coordinates vs float64 here


def test_resize_center_crop_and_normalize_match_torchvision():
    from torchvision.transforms import v2

    x = _nchw(b=4, h=96, w=96)
    out = aug.resize_center_crop(x, 64)
    ref = v2.Compose([v2.Resize(64, antialias=True), v2.CenterCrop(64)])(x.float())
    assert out.shape == (4, 3, 64, 64) and (out - ref).abs().max() < 1e-3
    assert aug.resize_center_crop(x, 96) is x
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    ref = v2.Normalize(mean, std)(x.float() / 255)
    assert (aug.normalize(x, mean, std) - ref).abs().max() < 1e-5


# ----------------------------------------------------------------------------- contrastive negatives


def _targets(n_per_class=(60, 40, 50, 30)) -> np.ndarray:
    t = np.repeat(np.arange(len(n_per_class)), n_per_class)
    return np.random.default_rng(0).permutation(t)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("replace", [False, True])
def test_contrast_idx_exact_label_aware(replace, backend):
    t = _targets()
    s = ContrastSampler(t, ContrastConfig(k=120, replace=replace), backend=backend)  # smallest pool: 180 - 60
    idx = torch.arange(len(t))
    out = s.sample(idx, torch.Generator().manual_seed(0))
    assert out.shape == (len(t), 121) and out.dtype == torch.int64
    assert torch.equal(out[:, 0], idx)
    tt = torch.as_tensor(t)
    assert (tt[out[:, 1:]] != tt[idx][:, None]).all()
    if not replace:
        assert all(len(set(row)) == 120 for row in out[:, 1:].tolist())
    assert torch.equal(out, s.sample(idx, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("replace", [False, True])
def test_contrast_negatives_uniform_over_other_classes(replace, backend):
    t = _targets((30, 20))
    s = ContrastSampler(t, ContrastConfig(k=10, replace=replace), backend=backend)
    anchors = torch.as_tensor(np.flatnonzero(t == 0)[:1]).repeat(3000)
    counts = np.bincount(s.sample(anchors, torch.Generator().manual_seed(0))[:, 1:].reshape(-1).numpy(), minlength=50)
    other = counts[t == 1]
    assert counts[t == 0].sum() == 0 and other.sum() == 30000
    assert abs(other.mean() - 1500) < 1e-9 and other.min() > 1300 and other.max() < 1700


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_contrast_relax_positive_is_same_class(backend):
    t = _targets()
    s = ContrastSampler(t, ContrastConfig(k=8, mode="relax"), backend=backend)
    idx = torch.arange(len(t))
    out = s.sample(idx, torch.Generator().manual_seed(0))
    tt = torch.as_tensor(t)
    assert torch.equal(tt[out[:, 0]], tt[idx]) and not torch.equal(out[:, 0], idx)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("replace", [False, True])
def test_contrast_unlabeled_never_draws_self(replace, backend):
    t = np.full(40, -1)
    k = 39 if not replace else 200
    s = ContrastSampler(t, ContrastConfig(k=k, replace=replace), backend=backend)
    idx = torch.arange(40)
    out = s.sample(idx, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], idx)
    assert (out[:, 1:] != idx[:, None]).all()
    if not replace:  # K = N - 1: every other image exactly once
        assert all(sorted(row) == sorted(set(range(40)) - {i}) for i, row in enumerate(out[:, 1:].tolist()))
    with pytest.raises(ConfigError, match="relax"):
        ContrastSampler(t, ContrastConfig(k=5, mode="relax"))


def test_contrast_k_too_large_names_field_and_max():
    with pytest.raises(ConfigError) as exc:
        ContrastSampler(_targets(), ContrastConfig(k=121, replace=False))
    assert exc.value.field == "distill.nce_k" and "120" in str(exc.value)
    ContrastSampler(_targets(), ContrastConfig(k=121, replace=True))  # with replacement any K works
    with pytest.raises(ConfigError, match="distill.nce_k"):
        ContrastSampler(_targets(), ContrastConfig(k=0))
    with pytest.raises(ConfigError, match="two classes"):
        ContrastSampler(np.zeros(10, dtype=np.int64), ContrastConfig(k=1, replace=True))


@pytest.mark.parametrize("replace", [False, True])
@pytest.mark.parametrize("k", [25, 120])  # 120: the smallest pool, so K = m for the largest class's anchors
@pytest.mark.parametrize("sizes", [(60, 60, 60), (60, 40, 50, 30)])
def test_contrast_backends_draw_the_same_indices(sizes, k, replace):
    t = _targets(sizes)
    idx = torch.randperm(len(t), generator=torch.Generator().manual_seed(1))[:64]
    cfg = ContrastConfig(k=k, replace=replace)
    a = ContrastSampler(t, cfg, backend="numpy").sample(idx, torch.Generator().manual_seed(3))
    b = ContrastSampler(t, cfg, backend="torch").sample(idx, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    tt = torch.as_tensor(t)
    assert (tt[a[:, 1:]] != tt[idx][:, None]).all()
    if not replace:
        assert all(len(set(row)) == k for row in a[:, 1:].tolist())
    independent = ContrastSampler(t, ContrastConfig(k=k, draw="independent"), backend="numpy")
    c = independent.sample(idx, torch.Generator().manual_seed(3))
    assert (tt[c[:, 1:]] != tt[idx][:, None]).all() and all(len(set(row)) == k for row in c[:, 1:].tolist())


# chi-square critical value at p = 0.001 (df = 19): a correct sampler fails one with
# probability 1/1000 for a given seed, a biased one (windows that do not wrap, offsets off by one) always
CHI2_999 = {19: 43.82}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("draw", ["window", "independent"])
def test_contrast_rows_are_uniform_subsets_without_replacement(draw, backend):
    """Each row is an exact uniform K-subset of its pool: with a pool of 6 and K = 3 all 20 subsets are
    equally likely (chi-square), in a balanced and in an imbalanced split. Window rows of one batch are
    dependent, so that draw is tested on one class-0 row per batch; independent rows on every row."""
    from itertools import combinations
    from math import comb

    per_batch = 1 if draw == "window" else 20
    for sizes in [(6, 6), (6, 2, 4)]:  # the class-0 pool has 6 images; imbalanced: the others have 10 and 8
        t = np.repeat(np.arange(len(sizes)), sizes)
        s = ContrastSampler(t, ContrastConfig(k=3, draw=draw), backend=backend)
        anchors = torch.as_tensor(np.r_[np.zeros(per_batch, dtype=np.int64), np.arange(len(t))])
        gen = torch.Generator().manual_seed(0)
        rows = torch.cat([s.sample(anchors, gen)[:per_batch, 1:] for _ in range(4000 // per_batch)])
        pool = np.flatnonzero(t != 0)
        subsets = {c: 0 for c in combinations(pool.tolist(), 3)}
        for row in rows.tolist():
            assert len(set(row)) == 3, row  # no duplicate in a row
            subsets[tuple(sorted(row))] += 1  # KeyError = a positive (class 0) among the negatives
        observed = np.array(list(subsets.values()))
        expected = len(rows) / comb(6, 3)
        chi2 = ((observed - expected) ** 2 / expected).sum()
        assert chi2 < CHI2_999[19], (chi2, observed)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_contrast_rows_of_a_batch_overlap_like_independent_draws(backend):
    """The rows of a batch share one permutation; two rows still overlap in K**2 / m negatives on average."""
    t = np.repeat(np.arange(2), [100, 400])
    k, m = 100, 400
    s = ContrastSampler(t, ContrastConfig(k=k), backend=backend)
    anchors = torch.zeros(32, dtype=torch.long)  # all class 0: one pool of 400
    gen = torch.Generator().manual_seed(0)
    overlaps = []
    for _ in range(50):
        rows = s.sample(anchors, gen)[:, 1:]
        hit = torch.zeros(32, len(t))
        hit.scatter_(1, rows, 1.0)
        both = hit @ hit.T
        overlaps.append(both[torch.triu_indices(32, 32, 1).unbind()])
    o = torch.cat(overlaps).double()
    assert abs(o.mean().item() - k * k / m) < 0.3, o.mean()  # 25; standard error ~0.05


# ----------------------------------------------------------------------------- loader


def _toy(n=100, side=32, classes=5) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(
        rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),
        np.arange(n) % classes,
        [str(c) for c in range(classes)],
    )


def test_loader_batches_keys_and_determinism():
    ds, spec = _toy(), DATASETS.get("cifar10")
    loader = BatchLoader(
        ds, spec, batch_size=32, train=True, device=torch.device("cpu"), seed=7, contrast=ContrastConfig(k=50)
    )
    assert len(loader) == 4 and len(BatchLoader(ds, spec, 32, True, drop_last=True)) == 3
    loader.set_epoch(2)
    batches = list(loader)
    b = batches[0]
    assert set(b) == {"image", "target", "index", "contrast_idx"}
    assert b["image"].shape == (32, 3, 32, 32) and b["image"].dtype == torch.float32
    assert b["contrast_idx"].shape == (32, 51) and torch.equal(b["contrast_idx"][:, 0], b["index"])
    assert torch.equal(b["target"], torch.as_tensor(ds.targets)[b["index"]])
    seen = torch.cat([x["index"] for x in batches])
    assert sorted(seen.tolist()) == list(range(100))
    loader.set_epoch(2)
    again = list(loader)
    assert all(
        torch.equal(x["image"], y["image"]) and torch.equal(x["contrast_idx"], y["contrast_idx"])
        for x, y in zip(batches, again)
    )
    nxt = list(loader)  # no set_epoch: epoch 3, a new shuffle
    assert not torch.equal(nxt[0]["index"], batches[0]["index"])
    cl = BatchLoader(ds, spec, 32, True, seed=7, channels_last=True)
    cl.set_epoch(2)
    first = next(iter(cl))["image"]
    assert first.is_contiguous(memory_format=torch.channels_last) and torch.equal(first, batches[0]["image"])


def test_eval_loader_is_ordered_and_normalised():
    ds, spec = _toy(), DATASETS.get("cifar100")
    loader = BatchLoader(ds, spec, batch_size=40, train=False)
    batches = list(loader)
    assert [len(x["index"]) for x in batches] == [40, 40, 20] and "contrast_idx" not in batches[0]
    x = torch.as_tensor(ds.images[:40]).permute(0, 3, 1, 2).float() / 255
    ref = (x - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]
    assert (batches[0]["image"] - ref).abs().max() < 1e-5


def test_loader_stl_sizes():
    ds = _toy(n=8, side=96)
    spec = DATASETS.get("stl10")
    train = next(iter(BatchLoader(ds, spec, 8, train=True)))
    test = next(iter(BatchLoader(ds, spec, 8, train=False)))
    assert train["image"].shape == test["image"].shape == (8, 3, 64, 64)


@needs_data
def test_splits_feed_loader_end_to_end():
    s = load_splits(DataConfig(dataset="cifar100", root=str(CIFAR100)))
    loader = BatchLoader(s.train, s.spec, 64, True, contrast=ContrastConfig(k=500, replace=s.contrast_replace))
    b = next(iter(loader))
    t = torch.as_tensor(s.train.targets)
    assert (t[b["contrast_idx"][:, 1:]] != b["target"][:, None]).all()
    assert b["contrast_idx"].max() < len(s.train)
    assert abs(float(b["image"].mean())) < 0.5


def test_splits_live_on_the_gpu_only_when_they_fit_half_the_runs_share():
    from cktf.data.loader import fits_on_device

    gib = 2**30
    cifar100, stl10_unlabeled = 50_000 * 32 * 32 * 3, 100_000 * 96 * 96 * 3
    assert fits_on_device(cifar100, 2 * gib) and fits_on_device(stl10_unlabeled, 6 * gib)
    assert not fits_on_device(stl10_unlabeled, 4 * gib)
    assert fits_on_device(gib, 2 * gib) and not fits_on_device(gib + 1, 2 * gib)
    # a quarter of an 80 GiB GPU, nearly all of it free: the run may use 20 GiB, so 10 GiB is the limit
    assert fits_on_device(10 * gib, 79 * gib, budget_bytes=20 * gib)
    assert not fits_on_device(10 * gib + 1, 79 * gib, budget_bytes=20 * gib)
    assert not fits_on_device(gib, gib, budget_bytes=20 * gib)  # the share is not free now: what is free counts


@pytest.mark.parametrize("dataset,side", [("cifar100", 32), ("tiny_imagenet", 64), ("stl10", 96)])
def test_the_device_code_path_gives_the_cpu_paths_numbers(dataset, side):
    """The path a GPU run takes (split resident on the device, negatives gathered by the torch sampler) yields the
    same batches as the host path (rows gathered in host memory and copied, numpy sampler), for the same seed,
    here with both on the CPU; the resident path copies nothing per batch."""
    ds, spec = _toy(n=96, side=side), DATASETS.get(dataset)
    contrast = ContrastConfig(k=40)
    dev = BatchLoader(ds, spec, 32, True, seed=3, contrast=contrast, residency="device", sampler_backend="torch")
    host = BatchLoader(ds, spec, 32, True, seed=3, contrast=contrast, residency="host", sampler_backend="numpy")
    for loader in (dev, host):
        loader.set_epoch(5)
    a, b = list(dev), list(host)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["contrast_idx"], y["contrast_idx"])
        assert torch.equal(x["image"], y["image"])  # bitwise: the same ops on the same parameters
    assert dev.resident and not host.resident
    assert dev.copied_bytes == 0 and host.copied_bytes == ds.images.nbytes  # one epoch of rows, once each
    # the plan is drawn on the CPU from (seed, epoch) alone: another loader, another device setting, same plan
    plan = BatchLoader(ds, spec, 8, True, seed=3).plan(5)
    assert torch.equal(plan.order, torch.cat([x["index"] for x in a]))
