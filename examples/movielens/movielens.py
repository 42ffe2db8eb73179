"""MovieLens CTR data and a DeepFM-style Keras model, the converter's benchmark model.

Label: rating >= 4. Features: user id, movie id (both through lookups the
converter lifts into the package), genres (multi-hot), release year, and user
and movie activity (log rating counts, from the training period only). The
split is by time within each user: a user's first 80% of ratings train, the
last 20% evaluate.
"""

from __future__ import annotations

import io
import re
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "movielens-small"
URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western", "(no genres listed)",
)
INPUTS = ("user_id", "movie_id", "movie_genres", "movie_year", "user_activity", "movie_activity")


@dataclass
class Split:
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    users: np.ndarray  # ids seen in training (the user vocabulary)
    movies: np.ndarray


def locate(path: str | Path | None) -> Path:
    """A MovieLens folder: the one given, the shared copy, or a download (where online).

    Downloads go to ``build/movielens-data`` (never into the read-only shared folder).
    """
    if path is not None:
        folder = Path(path)
        if not (folder / "ratings.csv").exists():
            raise SystemExit(f"error: {folder}: no ratings.csv (give a MovieLens folder)")
        return folder
    if (DEFAULT_DATA / "ratings.csv").exists():
        return DEFAULT_DATA
    folder = Path(__file__).resolve().parents[2] / "build" / "movielens-data"
    if (folder / "ratings.csv").exists():
        return folder
    try:
        with urllib.request.urlopen(URL, timeout=60) as resp:
            archive = zipfile.ZipFile(io.BytesIO(resp.read()))
    except OSError as exc:
        raise SystemExit(f"error: no MovieLens data at {DEFAULT_DATA} and the download failed ({exc})") from exc
    folder.mkdir(parents=True, exist_ok=True)
    for name in archive.namelist():
        if name.endswith((".csv", "README.txt")):
            (folder / Path(name).name).write_bytes(archive.read(name))
    return folder


def load(path: str | Path | None = None, train_fraction: float = 0.8) -> Split:
    folder = locate(path)
    ratings = pd.read_csv(folder / "ratings.csv").sort_values(["userId", "timestamp"], kind="stable")
    movies = pd.read_csv(folder / "movies.csv").set_index("movieId")
    # Per user, the earliest ratings train and the latest evaluate: no peeking into a user's future.
    position = ratings.groupby("userId").cumcount()
    size = ratings.groupby("userId")["userId"].transform("size")
    early = (position < (size * train_fraction).round()).to_numpy()
    train, test = ratings[early], ratings[~early]
    user_counts = train["userId"].value_counts()
    movie_counts = train["movieId"].value_counts()
    genres = _genres(movies)
    years = movies["title"].map(_year)
    year_mean, year_std = float(years.mean()), float(years.std())

    def columns(part: pd.DataFrame) -> dict[str, np.ndarray]:
        m = part["movieId"].to_numpy()
        year = years.reindex(m).fillna(year_mean).to_numpy()
        return {
            "user_id": part["userId"].to_numpy().astype(np.int64),
            "movie_id": m.astype(np.int64),
            "movie_genres": genres.reindex(m).fillna(0.0).to_numpy(np.float32),
            "movie_year": ((year - year_mean) / year_std).astype(np.float32),
            "user_activity": np.log1p(user_counts.reindex(part["userId"]).fillna(0).to_numpy()).astype(np.float32),
            "movie_activity": np.log1p(movie_counts.reindex(m).fillna(0).to_numpy()).astype(np.float32),
            "label": (part["rating"].to_numpy() >= 4.0).astype(np.int64),
        }

    return Split(columns(train), columns(test), np.sort(train["userId"].unique()),
                 np.sort(train["movieId"].unique()))


def _genres(movies: pd.DataFrame) -> pd.DataFrame:
    out = np.zeros((len(movies), len(GENRES)), np.float32)
    for row, text in enumerate(movies["genres"].fillna("")):
        for g in text.split("|"):
            if g in GENRES:
                out[row, GENRES.index(g)] = 1.0
    return pd.DataFrame(out, index=movies.index)


def _year(title: str) -> float:
    found = re.findall(r"\((\d{4})\)", str(title))
    return float(found[-1]) if found else float("nan")


def deepfm(split: Split, dim: int = 32) -> Any:
    """DeepFM: first-order terms + pairwise factorization machine + an MLP over field embeddings."""
    import keras

    user = keras.Input((), dtype="int64", name="user_id")
    movie = keras.Input((), dtype="int64", name="movie_id")
    genres = keras.Input((len(GENRES),), dtype="float32", name="movie_genres")
    dense = {n: keras.Input((1,), dtype="float32", name=n) for n in ("movie_year", "user_activity", "movie_activity")}
    u = keras.layers.IntegerLookup(vocabulary=split.users.tolist(), name="user_lookup")(user)
    m = keras.layers.IntegerLookup(vocabulary=split.movies.tolist(), name="movie_lookup")(movie)
    n_u, n_m = len(split.users) + 1, len(split.movies) + 1
    fields = [
        keras.layers.Embedding(n_u, dim, name="user_emb")(u),
        keras.layers.Embedding(n_m, dim, name="movie_emb")(m),
        keras.layers.Dense(dim, use_bias=False, name="genre_emb")(genres),
        *[keras.layers.Dense(dim, use_bias=False, name=f"{n}_emb")(x) for n, x in dense.items()],
    ]
    numeric = keras.layers.Concatenate(name="numeric")([genres, *dense.values()])
    first = keras.layers.Add(name="first_order")([
        keras.layers.Embedding(n_u, 1, name="user_bias")(u),
        keras.layers.Embedding(n_m, 1, name="movie_bias")(m),
        keras.layers.Dense(1, name="numeric_linear")(numeric),
    ])
    # FM pairwise term 0.5 * sum_k((sum_f v)^2 - sum_f v^2), from built-in layers only so the
    # .keras file loads without custom code.
    total = keras.layers.Add(name="field_sum")(fields)
    squares = keras.layers.Add(name="square_sum")(
        [keras.layers.Multiply(name=f"sq_{i}")([f, f]) for i, f in enumerate(fields)]
    )
    pairwise = keras.layers.Subtract(name="pairwise")([keras.layers.Multiply(name="sum_sq")([total, total]), squares])
    fm = keras.layers.Dense(1, use_bias=False, trainable=False, kernel_initializer=keras.initializers.Constant(0.5),
                            name="fm")(pairwise)
    deep = keras.layers.Concatenate(name="deep_in")(fields)
    deep = keras.layers.Dense(64, activation="relu", name="deep_1")(deep)
    deep = keras.layers.Dense(32, activation="relu", name="deep_2")(deep)
    deep = keras.layers.Dense(1, name="deep_out")(deep)
    logit = keras.layers.Add(name="logit")([first, fm, deep])
    score = keras.layers.Activation("sigmoid", name="score")(logit)
    inputs = {"user_id": user, "movie_id": movie, "movie_genres": genres, **dense}
    return keras.Model(inputs, {"score": score}, name="movielens_deepfm")


def train(split: Split, epochs: int = 3, seed: int = 0) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    model = deepfm(split)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")])
    x = {k: split.train[k] for k in INPUTS}
    model.fit(x, split.train["label"], epochs=epochs, batch_size=512, verbose=0)
    return model


def write_files(split: Split, out: Path, calibration_rows: int = 512, seed: int = 0) -> dict[str, Path]:
    """Held-out rows, calibration rows and training id counts in the converter's formats."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(split.train["label"]), calibration_rows, replace=False)
    paths = {"eval": out / "eval.npz", "calibration": out / "calibration.npz", "id_counts": out / "id_counts.npz"}
    np.savez(paths["eval"], **split.eval)
    np.savez(paths["calibration"], **{k: v[pick] for k, v in split.train.items()})
    np.savez(paths["id_counts"], user_id=split.train["user_id"], movie_id=split.train["movie_id"])
    return paths
