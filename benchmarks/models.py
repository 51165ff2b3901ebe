"""The benchmarks' served models: random-weight ResNet50 networks exported with the ``pixels``
signature of the serving contract, and their rows in the model registry.

``bench inference`` and ``bench tracing`` serve twenty yearly models (independent layout) or one
shared-backbone model; ``bench memory`` reuses the backbone and the export. These are not the
trainer's builders (``services.trainer.models``) on purpose: the trainer's ResNet50 takes the
"caffe" preprocessing of its ImageNet weights, its shared heads carry a per-year correction and its
models add augmentation, so they are different graphs from the ones whose costs docs/benchmarks.md
records; the benchmark keeps measuring the networks its table was measured on.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FIRST_YEAR = 2000
PREFIX = "genre"


def backbone(image_size: int) -> Any:
    """ResNet50 without its classifier, global-average pooled, random weights."""
    import keras

    return keras.applications.ResNet50(
        weights=None, include_top=False, pooling="avg", input_shape=(image_size, image_size, 3)
    )


def independent_model(image_size: int, genres: int, seed: int) -> Any:
    """One year's model: pixels 0..255 -> rescaling (in the graph) -> ResNet50 -> sigmoid head."""
    import keras

    keras.utils.set_random_seed(seed)
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    features = backbone(image_size)(keras.layers.Rescaling(1 / 127.5, offset=-1)(pixels))
    scores = keras.layers.Dense(genres, activation="sigmoid", name="scores")(features)
    return keras.Model(pixels, scores)


def shared_model(image_size: int, genres: int, years: int, seed: int) -> Any:
    """The shared-backbone layout: one ResNet50, one sigmoid head per year -> ``[N, years, genres]``."""
    import keras

    keras.utils.set_random_seed(seed)
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    features = backbone(image_size)(keras.layers.Rescaling(1 / 127.5, offset=-1)(pixels))
    heads = [
        keras.layers.Dense(genres, activation="sigmoid", name=f"year_{i}")(features) for i in range(years)
    ]
    scores = keras.layers.Lambda(lambda tensors: keras.ops.stack(tensors, axis=1), name="scores")(heads)
    return keras.Model(pixels, scores)


def export_pixels_signature(model: Any, dest: Path, image_size: int) -> None:
    """A SavedModel with the contract's ``pixels`` signature (pixels -> scores)."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="pixels",
        fn=lambda pixels: {"scores": model(pixels, training=False)},
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="pixels")],
    )
    archive.write_out(str(dest), verbose=False)


def ensure_tflite(saved_model: Path) -> Path:
    """``exports/model.tflite`` of a SavedModel's ``pixels`` signature (converted once, then reused)."""
    import tensorflow as tf

    tflite_path = saved_model / "exports" / "model.tflite"
    if not tflite_path.exists():
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["pixels"])
        tflite_path.parent.mkdir(parents=True, exist_ok=True)
        tflite_path.write_bytes(converter.convert())
    return tflite_path


def build_models(models_dir: Path, models: int, image_size: int, genres: int,
                 layouts: Iterable[str]) -> tuple[list[str], str]:
    """Export ``models`` independent models and the shared one with ``models`` heads (those of
    ``layouts`` only) into ``models_dir/<name>/1``; returns the independent names and the shared one.

    Exports are reused by a later run with the same models, image size and genres (``--workdir``).
    """
    layouts = set(layouts)
    shape = {"models": models, "image_size": image_size, "genres": genres}
    marker = models_dir / "bench.json"
    if models_dir.exists() and (not marker.exists() or json.loads(marker.read_text()) != shape):
        shutil.rmtree(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(shape))
    names = [f"{PREFIX}-{FIRST_YEAR + i}" for i in range(models)]
    for index, name in enumerate(names if "independent" in layouts else []):
        dest = models_dir / name / "1"
        if not (dest / "saved_model.pb").exists():
            log.info("exporting %s (%d/%d)", name, index + 1, len(names))
            export_pixels_signature(independent_model(image_size, genres, index), dest, image_size)
    shared = f"{PREFIX}-shared"
    dest = models_dir / shared / "1"
    if "shared" in layouts and not (dest / "saved_model.pb").exists():
        log.info("exporting %s", shared)
        export_pixels_signature(shared_model(image_size, genres, models, 1000), dest, image_size)
    return names, shared


def register(settings: Any, names: list[str], shared: str, image_size: int, genres: int,
             years: int | None = None, architecture: str = "resnet50") -> None:
    """Registry rows of the exported models (the registry's previous rows go): one per year for
    ``names`` (blessed) and the shared model (retired until :func:`serve_layout` picks it), whose
    heads are ``years`` years (as many as ``names`` unless given: a copied export has no ``names``)."""
    from shared.db import ModelVersion, session_scope

    genre_names = [f"genre{i:02d}" for i in range(genres)]
    head_years = [FIRST_YEAR + i for i in range(len(names) if years is None else years)]
    with session_scope(settings.effective_database_url) as session:
        session.query(ModelVersion).delete()
        for name, year in zip(names, head_years[:len(names)], strict=True):
            session.add(
                ModelVersion(
                    name=name,
                    version=1,
                    year=year,
                    image_size=image_size,
                    genres=genre_names,
                    architecture=architecture,
                    status="blessed",
                )
            )
        session.add(
            ModelVersion(
                name=shared,
                version=1,
                layout="shared",
                image_size=image_size,
                genres=genre_names,
                years=head_years,
                architecture=architecture,
                status="retired",
            )
        )


def serve_layout(settings: Any, layout: str) -> None:
    """Bless the independent models or the shared one (the web service picks the blessed ones)."""
    from shared.db import ModelVersion, session_scope

    with session_scope(settings.effective_database_url) as session:
        for row in session.query(ModelVersion):
            shared = row.layout == "shared"
            row.status = "blessed" if shared == (layout == "shared") else "retired"
