"""Fetch the three real-world PP-OCR models (and their config) into nncomp/data/real/ (package data), verifying pinned SHA-256s.

    python tools/fetch_real_models.py            # writes nncomp/data/real/*.onnx and config.yaml
    python tools/fetch_real_models.py --check    # only verifies the files already there

Source: the PyPI package ``rapidocr-onnxruntime`` 1.4.4 (Apache-2.0), fetched with
``pip download --no-deps`` into a temporary folder; the four files are read from the wheel (a zip)
without installing it. Every file, and the wheel itself, must match the SHA-256 pinned below, so a
re-published or tampered wheel is refused instead of silently changing the benchmark. Provenance,
licence and what each model is: data/real/README.md.
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "rapidocr-onnxruntime", "1.4.4"
WHEEL = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
WHEEL_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
# name in nncomp/data/real/ -> (path inside the wheel, SHA-256)
FILES = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
    "ch_PP-OCRv4_det_infer.onnx": (
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"),
    "ch_PP-OCRv4_rec_infer.onnx": (
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"),
    "config.yaml": (
        "rapidocr_onnxruntime/config.yaml",
        "bf94a1da4cba828e67b1d61e27cee14d9e7da27c9f272e04048a17e41ae97332"),
}
OUT = Path(__file__).resolve().parents[1] / "nncomp" / "data" / "real"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def check(out=OUT):
    """Verify the files in ``out``; returns a list of problems (empty: all match)."""
    problems = []
    for name, (_, digest) in FILES.items():
        path = out / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif sha256(path.read_bytes()) != digest:
            problems.append(f"{path}: SHA-256 {sha256(path.read_bytes())}, expected {digest}")
    return problems


def fetch(out=OUT):
    """Download the pinned wheel, verify it and extract the four files into ``out`` (write-then-rename)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "-q", "-d", tmp, f"{PACKAGE}=={VERSION}"], check=True)
        wheel = Path(tmp) / WHEEL
        if not wheel.is_file():
            sys.exit(f"pip did not save {WHEEL} (got {sorted(os.listdir(tmp))})")
        if sha256(wheel.read_bytes()) != WHEEL_SHA256:
            sys.exit(f"{WHEEL}: SHA-256 {sha256(wheel.read_bytes())}, expected {WHEEL_SHA256}; refusing it")
        with zipfile.ZipFile(wheel) as zf:
            for name, (member, digest) in FILES.items():
                data = zf.read(member)
                if sha256(data) != digest:
                    sys.exit(f"{member}: SHA-256 {sha256(data)}, expected {digest}; refusing it")
                tmp_path = out / (name + ".tmp")
                tmp_path.write_bytes(data)
                os.replace(tmp_path, out / name)
                print(f"{out / name}: {len(data):,} bytes, SHA-256 {digest}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="destination folder (default: nncomp/data/real/)")
    ap.add_argument("--check", action="store_true", help="only verify the files already in --out")
    args = ap.parse_args(argv)
    if not args.check:
        fetch(args.out)
    problems = check(args.out)
    for p in problems:
        print(p, file=sys.stderr)
    print("all files match their pinned SHA-256" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
