"""The data pipeline under `dlspec train`: how much of each step waits on data, and the peak memory
of training on an image cache larger than memory should allow.

    python bench/data_pipeline.py [--epochs 2] [--cache-gb 2.0] [--size 224] [--keep DIR] [--no-big]

1. Data wait: each example that trains on data this machine has (digits, land_price, digits_images;
   the CSV and the image folder are generated first) trained for --epochs in a fresh process; the
   `data_wait` of its metrics.jsonl records is the share of each epoch's step loop spent blocked on
   the next batch (the batches are made by a background thread while a step runs).
2. Peak memory: synthetic --size x --size RGB JPEG files in 10 class folders, as many as make a
   --cache-gb uint8 cache, trained on for one epoch by a tiny network twice: the first run decodes
   into the cache, the second reads it. Each run's peak resident set (ru_maxrss, mapped file pages
   included) is measured in its own process. Target: under 1 GB for a 2 GB cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TARGET_PEAK = 1024**3  # bytes

# dlspec's command line in this process, and its peak resident set printed last
_CHILD = ("import resource, sys\nfrom dlspec.cli import main\nrc = main(sys.argv[1:])\n"
          "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)\n")


def dlspec(args: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(seconds, peak resident bytes, output) of one `dlspec ...` in a fresh process."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"dlspec {' '.join(args)} failed: {(out.stderr or out.stdout).strip()[-300:]}")
    peak = next(int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("PEAK_KIB"))
    return seconds, peak * 1024, out.stdout


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def data_wait(epochs: int, work: Path) -> None:
    subprocess.run([sys.executable, str(EXAMPLES / "make_land_price.py"), "-o",
                    str(EXAMPLES / "land_price.csv")], check=True, capture_output=True)
    if not (EXAMPLES / "digits_images").is_dir():
        subprocess.run([sys.executable, str(EXAMPLES / "make_image_folder.py")], check=True,
                       capture_output=True)
    env = {"DLSPEC_CACHE": str(work / "cache")}
    print(f"data wait: share of each epoch's step loop blocked on the next batch ({epochs} epochs)")
    print(f"{'example':<16} {'steps/epoch':>11} {'s/epoch':>8} {'data_wait per epoch':>30}")
    for name in ("digits", "land_price", "digits_images"):
        run = work / name
        try:
            dlspec(["train", str(EXAMPLES / f"{name}.dlspec"), "--epochs", str(epochs), "--out", str(run)],
                   env)
        except RuntimeError as err:
            print(f"{name:<16} {err}")
            continue
        recs = records(run)
        waits = ", ".join(f"{r['data_wait']:.2%}" for r in recs)
        print(f"{name:<16} {recs[0]['step']:>11} {np.mean([r['seconds'] for r in recs]):>8.2f} {waits:>30}")


SPEC = """
model synthetic {{
  input  image: float32[N, 3, {size}, {size}]
  target label: int64[N]
  features {{ image = image / 255 }}
  backbone {{ avgpool(k=8) -> conv(8, k=3, stride=2) -> bn -> relu }}
  head classify(classes=10)
  loss cross_entropy
}}
train {{
  data      images("images", size=[{size}, {size}], test=0.1, cache="cache")
  batch     64
  epochs    1
  optimizer adam(lr=3e-3)
}}
"""


def make_images(root: Path, count: int, size: int) -> None:
    """`count` JPEG files in 10 class folders: a class colour plus smooth noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = rng.integers(40, 216, (10, 3))
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        c = i % 10
        low = np.clip(colours[c] + rng.normal(0, 40, (size // 16, size // 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(low).resize((size, size), Image.Resampling.BILINEAR).save(
            root / str(c) / f"{i:06d}.jpg", quality=90)


def peak_memory(cache_gb: float, size: int, work: Path) -> None:
    per_image = 3 * size * size
    count = int(cache_gb * 1024**3 // per_image)
    start = time.perf_counter()
    make_images(work / "images", count, size)
    print(f"\npeak memory: {count} synthetic {size}x{size} JPEG files ({_gib(_du(work / 'images'))} GiB) "
          f"written in {time.perf_counter() - start:.0f} s; cache {_gib(count * per_image)} GiB")
    spec = work / "synthetic.dlspec"
    spec.write_text(SPEC.format(size=size))
    print(f"{'run':<28} {'seconds':>8} {'peak RSS (MiB)':>15} {'data_wait':>10}  target < 1024 MiB")
    for what in ("first (decodes the files)", "second (reads the cache)"):
        run = work / "run"
        shutil.rmtree(run, ignore_errors=True)
        seconds, peak, _ = dlspec(["train", str(spec), "--out", str(run)])
        wait = records(run)[0]["data_wait"]
        mark = "met" if peak < TARGET_PEAK else "MISSED"
        print(f"{what:<28} {seconds:>8.1f} {peak / 2**20:>15.0f} {wait:>10.2%}  {mark}")
    cache = next((work / "cache").glob("*.npy"))
    print(f"cache file {cache.name}: {_gib(cache.stat().st_size)} GiB")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cache-gb", type=float, default=2.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--keep", type=Path, help="work in this folder and leave it (default: a temporary one)")
    ap.add_argument("--no-big", action="store_true", help="only the data-wait part")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="dlspec-data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data_wait(args.epochs, work)
        if not args.no_big:
            peak_memory(args.cache_gb, args.size, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
