"""The dataset registry (harness.data.registry) and the image-folder datasets: ImageNet (RobustBench's
5,000-image subset) and TinyImageNet, read lazily from real JPEG files written here with PIL."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.core.errors import HarnessError
from harness.data import registry as datasets
from harness.data.loaders import load_test_data


def _picture(h: int, w: int, seed: int) -> Image.Image:
    """A smooth RGB picture (gradients and a few blobs), so that JPEG and resizing do real work."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([(xx / w) * 255, (yy / h) * 255, ((xx + yy) / (h + w)) * 255], -1)
    for _ in range(4):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(5, max(6, min(h, w) // 3))
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def make_imagenet(root, n: int, sizes=((300, 340), (360, 290), (256, 256))) -> list[str]:
    """``root/val/<wnid>/<file>.JPEG`` for the first ``n`` standard ids, one decoy image that is not
    in the subset, and all 1,000 class folders (so that RobustBench's own loader numbers the classes
    as on the full folder)."""
    ids = list(datasets.imagenet_ids()[:n])
    val = root / "val"
    for w in datasets.imagenet_wnids():
        (val / w).mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(ids):
        h, w = sizes[k % len(sizes)]
        _picture(h, w, k).save(val / i, format="JPEG", quality=90)
    _picture(300, 300, 99).save(val / ids[0].split("/")[0] / "ILSVRC2012_val_99999999.JPEG", format="JPEG")
    return ids


def test_the_registry_is_torch_free_and_feeds_the_schemas():
    code = ("import sys, harness.data.registry, harness.submission, harness.record; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "from harness.submission.schema import json_schema; "
            "print(json_schema()['properties']['dataset']['enum'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert eval(out.stdout) == datasets.names()
    assert {"mnist", "cifar10", "cifar100", "imagenet", "tinyimagenet", "custom"} <= set(datasets.names())
    im = datasets.get("imagenet")
    assert im.n_test == 5000 and len(datasets.imagenet_ids()) == 5000 and im.num_classes == 1000
    assert len(set(datasets.imagenet_ids())) == 5000
    assert im.default_threat_model == ("Linf", 4 / 255) and im.default_preprocessing == "Res256Crop224"
    assert len(im.names()) == 1000 and im.names()[0] == "tench"  # torchvision's class names
    with pytest.raises(HarnessError, match="unknown dataset 'svhn'; known: mnist"):
        datasets.get("svhn")


def test_preprocessing_vocabulary_is_robustbenchs():
    """Our names are RobustBench's (None is "none"), and our uint8 transforms reproduce its own
    transforms (ToTensor included) exactly on a real JPEG."""
    from robustbench.data import PREPROCESSINGS as RB

    from harness.data.loaders import transform_for
    from harness.models import compat  # noqa: F401

    assert {("none" if k is None else k) for k in RB} == set(datasets.PREPROCESSINGS)
    img = _picture(300, 341, 3)
    for name in datasets.PREPROCESSINGS:
        ours = np.asarray(transform_for(name)(img), dtype=np.float32).transpose(2, 0, 1) / 255.0
        theirs = RB[None if name == "none" else name](img).numpy()
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), name
        size = datasets.PREPROCESSING_SIZE[name]
        assert size is None or ours.shape[1:] == size


@pytest.mark.parametrize("prep", ["Res256Crop224", "BicubicRes256Crop224", "Crop288", "Res224"])
def test_imagenet_subset_in_robustbench_order(tmp_path, prep):
    """The first points come out in RobustBench's order with its labels and, for every
    preprocessing, exactly what RobustBench's own ImageNet loader produces from the same folder."""
    from robustbench.data import PREPROCESSINGS as RB
    from robustbench.loaders import CustomImageFolder

    from harness.models import compat  # noqa: F401

    ids = make_imagenet(tmp_path, 3)
    d = load_test_data("imagenet", 3, data_dir=tmp_path, preprocessing=prep)
    size = datasets.PREPROCESSING_SIZE[prep]
    assert len(d) == 3 and d.input_shape == (3, *size)
    assert d.source == f"imagenet-folder:robustbench imagenet 5000 ids, first 3; preprocessing {prep}"
    theirs = CustomImageFolder(str(tmp_path / "val"), RB[prep])
    for k in range(3):
        x, y, path = theirs[k]
        assert path.endswith(ids[k])
        assert int(d.y[k]) == y
        assert np.array_equal(d.floats(slice(k, k + 1))[0].numpy(), x.numpy())
    # the same points when DIR is the val folder itself
    d2 = load_test_data("imagenet", 3, data_dir=tmp_path / "val", preprocessing=prep)
    assert np.array_equal(d2.uint8().numpy(), d.uint8().numpy())


def test_imagenet_errors_are_one_line(tmp_path):
    make_imagenet(tmp_path, 2)
    with pytest.raises(HarnessError, match=r"1 of the first 3 imagenet test images are missing") as e:
        load_test_data("imagenet", 3, data_dir=tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(HarnessError, match="no ImageNet validation folder"):
        load_test_data("imagenet", 2, data_dir=tmp_path / "val" / datasets.imagenet_wnids()[5])
    with pytest.raises(HarnessError, match="pass --data-dir"):
        load_test_data("imagenet", 2)
    with pytest.raises(HarnessError, match="has only 5000 test points"):
        load_test_data("imagenet", 5001, data_dir=tmp_path)
    # images of different sizes cannot be stacked without a resize/crop
    d = load_test_data("imagenet", 2, data_dir=tmp_path, preprocessing="none")
    with pytest.raises(HarnessError, match="declare a resize/crop preprocessing"):
        d.floats(slice(0, 2))
    with pytest.raises(HarnessError, match="not available for cifar10"):
        load_test_data("cifar10", 2, preprocessing="Res224")


def test_lazy_images_decode_one_block_at_a_time(tmp_path):
    make_imagenet(tmp_path, 6)
    d = load_test_data("imagenet", 6, data_dir=tmp_path, preprocessing="Res224")
    assert d.images.decoded == 0  # nothing decoded until asked
    a = d.floats(slice(0, 3))
    d.labels(slice(0, 3)), d.floats(np.array([2, 0])), d.uint8(np.array([1]))
    assert d.images.decoded == 3  # the same block is served from the cache
    d.floats(slice(3, 6))
    assert d.images.decoded == 6
    assert np.array_equal(d.floats(slice(0, 3)).numpy(), a.numpy()) and d.images.decoded == 9


def make_tinyimagenet(root, n: int) -> tuple[list[str], list[str]]:
    """The official TinyImageNet layout: wnids.txt (200 classes, unsorted), val/val_annotations.txt,
    val/images/val_N.JPEG (64x64) for the first ``n`` files, and a decoy not in the annotations."""
    rng = np.random.default_rng(0)
    wnids = [f"n{int(v):08d}" for v in rng.choice(10**8, 200, replace=False)]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines, labels = [], []
    for i in range(10_000):
        w = wnids[(i * 37) % 200]
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
        labels.append(w)
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    for i in range(n):
        _picture(64, 64, i).save(root / "val" / "images" / f"val_{i}.JPEG", format="JPEG")
    _picture(64, 64, 7).save(root / "val" / "images" / "decoy.JPEG", format="JPEG")
    return labels[:n], wnids


def test_tinyimagenet_in_file_id_order(tmp_path):
    labels, wnids = make_tinyimagenet(tmp_path, 12)
    d = load_test_data("tinyimagenet", 12, data_dir=tmp_path)
    assert d.input_shape == (3, 64, 64) and len(d) == 12
    assert d.source == "tinyimagenet-folder:tinyimagenet val images in file-id order (val_0 .. val_9999), " \
                       "first 12; preprocessing none"
    order = sorted(wnids)
    assert d.y.tolist() == [order.index(w) for w in labels]
    for k in (0, 2, 9, 10, 11):  # val_10 comes after val_9 (numeric order, not the directory's)
        with Image.open(tmp_path / "val" / "images" / f"val_{k}.JPEG") as im:
            ref = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(d.uint8(np.array([k]))[0].numpy(), ref)
    # DIR may be the val folder; a missing file is one clear line
    assert load_test_data("tinyimagenet", 2, data_dir=tmp_path / "val").y.tolist() == d.y[:2].tolist()
    with pytest.raises(HarnessError, match="val_12.JPEG"):
        load_test_data("tinyimagenet", 13, data_dir=tmp_path)


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys
    import torch
    from harness.data.loaders import load_test_data
    n, root = int(sys.argv[1]), sys.argv[2]
    for m in (n, n, 4 * n):  # a warm-up pass, the peak after N images, then after 4N
        d = load_test_data("imagenet", m, data_dir=root, preprocessing="Res224")
        total = 0.0
        for a in range(0, m, 16):
            total += float(d.floats(slice(a, min(m, a + 16))).mean())
        assert total > 0
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
""")


def test_memory_does_not_grow_with_n(tmp_path):
    """Reading 4N images after N at 224x224 raises the peak RSS by far less than the 3N extra
    images' float32 size: the loader streams blocks, it never holds the whole subset."""
    n = 32
    ids = list(datasets.imagenet_ids()[:4 * n])
    for k, i in enumerate(ids):
        (tmp_path / "val" / i).parent.mkdir(parents=True, exist_ok=True)
        _picture(232, 232, k).save(tmp_path / "val" / i, format="JPEG")
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(n), str(tmp_path)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1",
                              "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
    assert out.returncode == 0, out.stderr[-2000:]
    _, first, second = (int(v) for v in out.stdout.split())
    growth = second - first
    held = 3 * n * 224 * 224 * 3 * 4  # what holding the extra images as floats would take
    print(f"peak RSS {first} then {second}, growth {growth / 2**20:.1f} MiB, 3N float images {held / 2**20:.1f} MiB")
    assert growth < held / 4, (growth, held)


def test_imagenet_schema(tmp_path):
    from pydantic import ValidationError

    from harness.submission.load import validation_problems
    from harness.submission.schema import Submission

    base = {"id": "x", "name": "x", "authors": ["a"], "license": "MIT", "dataset": "imagenet",
            "model": {"format": "state_dict", "architecture": "robustbench.zoo:imagenet/Linf/Salman2020Do_R18",
                      "checkpoint": {"path": "m.pt", "sha256": "0" * 64}},
            "training": {"method": "pgd", "attack_steps": 3}}
    s = Submission.model_validate(base)
    assert (s.threat_model.norm, s.threat_model.eps) == ("Linf", 4 / 255) and s.resize_crop == "Res256Crop224"
    s = Submission.model_validate({**base, "model": {**base["model"], "preprocessing": {"resize_crop": "Crop288"}}})
    assert s.resize_crop == "Crop288"
    for bad, field, msg in [
        ({"model": {**base["model"], "preprocessing": {"resize_crop": "Res999"}}}, "model.preprocessing.resize_crop",
         "unknown preprocessing 'Res999'"),
        ({"dataset": "cifar10", "model": {**base["model"], "preprocessing": {"resize_crop": "Res224"}},
          "threat_model": {"norm": "Linf", "eps": "8/255"}}, "model.preprocessing.resize_crop", "not available"),
        ({"dataset": "svhn"}, "dataset", "must be one of mnist"),
        ({"dataset": "cifar10"}, "threat_model", "Field required"),
    ]:
        with pytest.raises(ValidationError) as e:
            Submission.model_validate({**base, **bad})
        p = validation_problems(e.value)[0]
        assert p.field == field and msg in p.message and "\n" not in str(p), str(p)


def _zoo_resnet18_checkpoint(path, labels):
    """Salman2020Do_R18's architecture (torchvision's ResNet-18 behind RobustBench's normaliser)
    with random weights, its last layer set so that it predicts a class none of ``labels`` is (so
    the test stays fast on a CPU: AutoAttack has nothing to attack), saved as a plain state_dict."""
    import torch

    from harness.models.architectures import build_architecture

    torch.manual_seed(0)
    net = build_architecture("robustbench.zoo:imagenet/Linf/Salman2020Do_R18")
    other = next(c for c in range(1000) if c not in labels)
    with torch.no_grad():
        net.model.fc.weight.mul_(1e-3)
        net.model.fc.bias.zero_()
        net.model.fc.bias[other] = 10.0
    torch.save(net.state_dict(), path)


def _zoo_submission(tmp_path, make_submission, resize_crop: str | None, sizes) -> tuple:
    import yaml

    from harness.core.files import sha256_file

    ids = make_imagenet(tmp_path / "imagenet", 2, sizes=sizes)
    labels = [datasets.imagenet_wnids().index(i.split("/")[0]) for i in ids]
    model = {"format": "state_dict", "architecture": "robustbench.zoo:imagenet/Linf/Salman2020Do_R18",
             "checkpoint": {"path": "model.pt", "sha256": "0" * 64}}
    if resize_crop is not None:
        model["preprocessing"] = {"resize_crop": resize_crop}
    path = make_submission("imagenet-r18", write=lambda p: _zoo_resnet18_checkpoint(p, set(labels)),
                           dataset="imagenet", model=model,
                           training={"method": "pgd", "attack_steps": 3, "epochs": 90},
                           evaluation={"n_examples": 2, "batch_size": 2, "seed": 0})
    doc = yaml.safe_load(path.read_text())
    doc.pop("threat_model")  # the dataset's default: Linf 4/255
    doc["model"]["checkpoint"]["sha256"] = sha256_file(path.parent / "model.pt")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, labels


def _resnet18_flops(size: int) -> float:
    import torchvision

    from harness.compute.flops import count_inference_flops

    return count_inference_flops(torchvision.models.resnet18(), (3, size, size), "cpu").total


@pytest.mark.slow
def test_imagenet_zoo_model_at_224(tmp_path, make_submission):
    """A RobustBench ImageNet zoo architecture (Salman2020Do_R18) with a local checkpoint, on the
    standard subset's first points with the default preprocessing (Res256Crop224) and the default
    threat model (Linf 4/255): clean accuracy, FLOPs at 224x224 and AutoAttack in the sandboxed
    worker. (Every stage at 224 takes minutes on a CPU; the next test runs all of them at 64x64.)"""
    from harness.runner.evaluate import evaluate
    from harness.stages import EvalOptions

    path, labels = _zoo_submission(tmp_path, make_submission, None, ((300, 340), (360, 290)))
    out = evaluate(path, EvalOptions(device="cpu", data_dir=tmp_path / "imagenet", progress=False),
                   stages=["clean", "flops", "autoattack"], out=tmp_path / "rec.json", echo=lambda line: None)
    rec = out.record
    assert rec.dataset == "imagenet" and rec.n_examples == 2
    assert (rec.threat_model.norm, rec.threat_model.eps) == ("Linf", 4 / 255)
    assert rec.provenance.data_source.endswith("robustbench imagenet 5000 ids, first 2; preprocessing Res256Crop224")
    assert out.arrays["label"].tolist() == labels
    assert rec.clean_accuracy == 0.0 and rec.robust_accuracy == 0.0  # the planted last layer
    # fvcore's count of torchvision's ResNet-18 at 224x224 is the published 1.82 G multiply-adds;
    # the zoo model adds its normaliser's few elementwise operations
    ref = _resnet18_flops(224)
    assert abs(ref - 1.82e9) / 1.82e9 < 0.01
    assert ref <= rec.inference_flops < ref * 1.001


@pytest.mark.slow
def test_imagenet_zoo_model_runs_every_stage(tmp_path, make_submission):
    """The same zoo model through every stage (clean, FLOPs, certify, AutoAttack, diagnostics) in
    the sandboxed worker, on 64x64 JPEGs read with the declared preprocessing "none"."""
    from harness.record.read import read_record
    from harness.runner.evaluate import evaluate
    from harness.stages import EvalOptions

    path, labels = _zoo_submission(tmp_path, make_submission, "none", ((64, 64),))
    out = evaluate(path, EvalOptions(device="cpu", data_dir=tmp_path / "imagenet", progress=False),
                   out=tmp_path / "rec.json", echo=lambda line: None)
    rec = out.record
    assert set(rec.stages) == {"clean", "flops", "certify", "autoattack", "diagnostics"}
    assert rec.provenance.data_source.endswith("first 2; preprocessing none")
    assert out.arrays["label"].tolist() == labels
    ref = _resnet18_flops(64)
    assert ref <= rec.inference_flops < ref * 1.001
    assert rec.diagnostics is not None
    assert read_record(out.json_path).submission_id == "imagenet-r18"


def test_a_new_dataset_is_one_registration(tmp_path, make_submission):
    """A toy dataset added by one register() call is accepted by the submission schema, loaded,
    evaluated through every stage (in this process: a sandboxed worker is a fresh process that
    knows only the built-in registry), recorded and titled on the leaderboard."""
    import torch

    from harness.data.loaders import ArrayImages, Loaded
    from harness.record.read import read_record
    from harness.runner.evaluate import evaluate
    from harness.stages import EvalOptions
    from harness.submission.schema import json_schema
    from leaderboard.boards import Board

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 1, 28, 28), dtype=np.uint8)
    y = np.arange(12) % 3

    datasets.register(datasets.DatasetSpec(
        name="toy", title="Toy shapes", num_classes=3, input_shape=(1, 28, 28), n_test=12, train_size=600,
        loader=lambda spec, req: Loaded(ArrayImages(torch.from_numpy(x)), y, "toy:generated", len(y)),
        class_names=("zero", "one", "two"),
    ))
    try:
        assert "toy" in json_schema()["properties"]["dataset"]["enum"]
        from harness.models.architectures import mnist_mlp

        torch.manual_seed(0)
        path = make_submission("toy-mlp", module=mnist_mlp(num_classes=3), dataset="toy",
                               threat_model={"norm": "Linf", "eps": 0.01},
                               model={"format": "state_dict", "architecture": "mnist_mlp",
                                      "architecture_kwargs": {"num_classes": 3},
                                      "checkpoint": {"path": "model.pt", "sha256": "0" * 64}},
                               evaluation={"n_examples": 6, "batch_size": 3, "seed": 0})
        import yaml

        from harness.core.files import sha256_file

        doc = yaml.safe_load(path.read_text())
        doc["model"]["checkpoint"]["sha256"] = sha256_file(path.parent / "model.pt")
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out = evaluate(path, EvalOptions(device="cpu", sandbox="none", progress=False),
                       out=tmp_path / "rec.json", echo=lambda line: None)
        rec = read_record(out.json_path)
        assert rec.dataset == "toy" and rec.n_examples == 6 and rec.provenance.data_source == "toy:generated"
        assert set(rec.stages) == {"clean", "flops", "certify", "autoattack", "diagnostics"}
        assert out.arrays["label"].tolist() == y[:6].tolist()
        # clean accuracy against an independent forward pass of the same weights
        net = mnist_mlp(num_classes=3)
        net.load_state_dict(torch.load(path.parent / "model.pt", weights_only=True))
        pred = net(torch.from_numpy(x[:6]).float() / 255).argmax(1).numpy()
        assert rec.clean_accuracy == pytest.approx(float((pred == y[:6]).mean()))
        # training FLOPs use the registry's training-set size (600 images x 1 epoch, standard training)
        assert rec.training_flops.value == pytest.approx(3 * rec.inference_flops * 600)
        assert Board("toy", "Linf", 0.01, []).title.startswith("Toy shapes")
    finally:
        datasets.unregister("toy")
    with pytest.raises(HarnessError, match="unknown dataset 'toy'"):
        load_test_data("toy", 2)
