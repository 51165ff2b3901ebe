"""Put TF.js (``@tensorflow/tfjs`` 4.22.0, ``dist/tf.min.js``, 1.5 MB) into ``static/vendor/`` for the
in-browser mode; the page loads it from there (no CDN). Not committed: run once after install::

    python -m services.web.vendor

It copies the file from the repository's ``node_modules`` (``npm ci``) when that holds 4.22.0, else
fetches the package with ``npm pack`` (npm's ordinary client) and extracts the one file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TFJS_PACKAGE = "@tensorflow/tfjs"
TFJS_VERSION = "4.22.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
VENDOR_DIR = Path(__file__).resolve().parent / "static" / "vendor"
TFJS_FILE = "tf.min.js"


class VendorError(RuntimeError):
    pass


def _from_node_modules(node_modules: Path) -> Path | None:
    package = node_modules / TFJS_PACKAGE
    try:
        version = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    bundle = package / "dist" / TFJS_FILE
    return bundle if version == TFJS_VERSION and bundle.is_file() else None


def _from_npm(work: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("npm is not installed: install Node.js/npm, or copy tf.min.js of "
                          f"{TFJS_PACKAGE}@{TFJS_VERSION} into {VENDOR_DIR}")
    result = subprocess.run([npm, "pack", f"{TFJS_PACKAGE}@{TFJS_VERSION}", "--silent"], cwd=work,
                            capture_output=True, text=True, check=False)
    tarballs = sorted(work.glob("*.tgz"))
    if result.returncode != 0 or not tarballs:
        raise VendorError(f"npm pack {TFJS_PACKAGE}@{TFJS_VERSION} failed: {result.stderr.strip()[-500:]}")
    with tarfile.open(tarballs[0]) as archive:
        member = archive.getmember(f"package/dist/{TFJS_FILE}")
        extracted = archive.extractfile(member)
        if extracted is None:
            raise VendorError(f"{tarballs[0].name} has no dist/{TFJS_FILE}")
        target = work / TFJS_FILE
        target.write_bytes(extracted.read())
    return target


def ensure_tfjs(vendor_dir: Path = VENDOR_DIR, node_modules: Path = REPO_ROOT / "node_modules") -> Path:
    """The path of ``tf.min.js`` in ``vendor_dir``, put there if missing."""
    target = vendor_dir / TFJS_FILE
    if target.is_file() and target.stat().st_size > 0:
        return target
    vendor_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tfjs-") as folder:
        source = _from_node_modules(node_modules) or _from_npm(Path(folder))
        staging = vendor_dir / f".{TFJS_FILE}.tmp"
        shutil.copyfile(source, staging)
        staging.replace(target)  # atomic: the page never loads half a file
    return target


def main() -> int:
    try:
        path = ensure_tfjs()
    except VendorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"TF.js {TFJS_VERSION} for the in-browser mode: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
