"""Write examples/land_price.csv, the synthetic data of the land_price example (seeded, 2000 rows).

Run `python examples/make_land_price.py` before training examples/land_price.dlspec; the CSV is
generated, not committed. Price (thousands) grows with the area, falls with the distance to town,
and is scaled by the plot's district. As in real tables some cells are empty: the district of 5%
of the rows and the distance of 3%.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DISTRICTS = {"centre": 1.3, "riverside": 1.15, "north": 1.0, "east": 0.9, "south": 0.8}  # price factor
SHARES = [0.15, 0.1, 0.3, 0.25, 0.2]
MISSING_DISTRICT, MISSING_DISTANCE = 0.05, 0.03


def make(rows: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns length, width (metres), distance (km, NaN where missing), district (a name, "" where
    missing), price (thousands)."""
    rng = np.random.default_rng(seed)
    length = rng.uniform(10, 100, rows)
    width = rng.uniform(10, 60, rows)
    distance = rng.gamma(2.0, 5.0, rows)                   # mostly near town, a long tail out
    noise = rng.normal(0, 5, rows)
    district = rng.choice(list(DISTRICTS), rows, p=SHARES)
    factor = np.array([DISTRICTS[d] for d in district])
    price = (0.05 * length * width * np.exp(-distance / 20) + 20) * factor + noise
    district[rng.random(rows) < MISSING_DISTRICT] = ""      # the price still knows it; the table not
    distance[rng.random(rows) < MISSING_DISTANCE] = np.nan
    return {"length": length, "width": width, "distance": distance, "district": district,
            "price": np.maximum(price, 1.0)}


def write(table: dict[str, np.ndarray], path: Path) -> None:
    """A CSV: numbers to 3 decimals, an empty cell for a missing value."""
    def cell(v: str | float) -> str:
        if isinstance(v, str):
            return v
        return "" if np.isnan(v) else f"{v:.3f}"

    lines = [",".join(table)] + [",".join(cell(col[i]) for col in table.values())
                                 for i in range(len(table["price"]))]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=HERE / "land_price.csv")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    write(make(args.rows, args.seed), args.output)
    print(f"wrote {args.output} ({args.rows} rows)")


if __name__ == "__main__":
    main()
