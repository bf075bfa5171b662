"""Write examples/land_price.csv, the synthetic data of the land_price example (seeded, 2000 rows).

Run `python examples/make_land_price.py` before training examples/land_price.dlspec; the CSV is
generated, not committed. Price (thousands) grows with the area and falls with the distance to town.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def make(rows: int = 2000, seed: int = 0) -> np.ndarray:
    """Columns length, width (metres), distance (km), price (thousands)."""
    rng = np.random.default_rng(seed)
    length = rng.uniform(10, 100, rows)
    width = rng.uniform(10, 60, rows)
    distance = rng.gamma(2.0, 5.0, rows)                   # mostly near town, a long tail out
    area = length * width
    price = 0.05 * area * np.exp(-distance / 20) + 20 + rng.normal(0, 5, rows)
    return np.stack([length, width, distance, np.maximum(price, 1.0)], axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=HERE / "land_price.csv")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    table = make(args.rows, args.seed)
    header = "length,width,distance,price"
    np.savetxt(args.output, table, fmt="%.3f", delimiter=",", header=header, comments="")
    print(f"wrote {args.output} ({args.rows} rows)")


if __name__ == "__main__":
    main()
