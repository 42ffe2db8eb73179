"""Train the MovieLens DeepFM model and convert it into a signed edgerec package.

    python examples/movielens/train_and_convert.py [--data MOVIELENS_DIR] [--out build/movielens]

Without ``--data`` it reads ``../shared/data/movielens-small`` (relative to the
repository root) and downloads ml-latest-small where that folder is missing
and the internet is reachable. The conversion is the same as

    edgerec convert build/movielens/deepfm.keras --out build/movielens/movielens.edgepkg \\
        --sign-key KEY --quantize auto --calibration build/movielens/calibration.npz \\
        --eval build/movielens/eval.npz --label label --batch-buckets 1,16,64,256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import movielens

from edgerec.converter.cli import report_table
from edgerec.converter.pipeline import ConvertOptions, convert
from edgerec.sdk.cli.output import console
from edgerec.sdk.keys import generate_keypair, load_signing_key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="MovieLens folder (ratings.csv, movies.csv)")
    ap.add_argument("--out", default="build/movielens")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--sign-key", help="Ed25519 publisher key (default: a new one in --out)")
    args = ap.parse_args()
    out = Path(args.out)
    split = movielens.load(args.data)
    model = movielens.train(split, epochs=args.epochs)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "deepfm.keras")
    files = movielens.write_files(split, out)
    if args.sign_key:
        key = load_signing_key(args.sign_key)
    else:
        key = load_signing_key(generate_keypair(out, "publisher", overwrite=True).private_path)
    opts = ConvertOptions(name="movielens-deepfm", quantize="auto", calibration=files["calibration"],
                          eval=files["eval"], batch_buckets=(1, 16, 64, 256), progress=True)
    result = convert(out / "deepfm.keras", out / "movielens.edgepkg", key, opts)
    console.print(report_table(result))
    console.print(f"wrote {result.path}")


if __name__ == "__main__":
    main()
