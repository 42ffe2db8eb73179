"""The item id follows the model: a Keras model whose item input is ``movie_id``.

The package's ``item_id_field`` is the item-role input that is an id (and
``user_id_field`` the user one), so ``/v1/rank`` and ``EdgeModel.rank`` take
plain movie ids; ``--item-field`` / ``--user-field`` override the choice; an
object candidate is named in the answer by its id field, not its position.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from edgerec.converter.pipeline import ConvertOptions, convert
from edgerec.sdk.cli.main import cli
from edgerec.sdk.errors import InvalidInputError
from edgerec.sdk.keys import generate_keypair, load_verify_key
from edgerec.sdk.model import EdgeModel
from edgerec.sdk.package import Package

USERS = [f"user{i}" for i in range(20)]
N_MOVIES, N_GENRES = 50, 6


def _movie_model():
    """user_id (StringLookup) and user_age; movie_id and movie_genre (Embeddings); hour (context)."""
    import keras

    keras.utils.set_random_seed(3)
    user = keras.Input((), dtype="string", name="user_id")
    age = keras.Input((1,), dtype="float32", name="user_age")
    movie = keras.Input((), dtype="int64", name="movie_id")
    genre = keras.Input((), dtype="int64", name="movie_genre")
    hour = keras.Input((1,), dtype="float32", name="hour")
    u = keras.layers.Embedding(len(USERS) + 1, 8)(keras.layers.StringLookup(vocabulary=USERS)(user))
    m = keras.layers.Embedding(N_MOVIES, 8)(movie)
    g = keras.layers.Embedding(N_GENRES, 4)(genre)
    x = keras.layers.Concatenate()([u, m, g, age, hour])
    score = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(8, activation="relu")(x))
    return keras.Model({"user_id": user, "user_age": age, "movie_id": movie, "movie_genre": genre,
                        "hour": hour}, {"score": score})


@pytest.fixture(scope="module")
def movie_pkg(signing_key, tmp_path_factory):
    d = tmp_path_factory.mktemp("movies")
    model = _movie_model()
    res = convert(model, d / "movies.edgepkg", signing_key,
                  ConvertOptions(name="movies", quantize="none", formats=("tflite",)))
    return res, d


def test_the_item_and_user_id_fields_are_the_inputs_marked_with_those_roles(movie_pkg, signing_key):
    res, _ = movie_pkg
    m = Package.open(res.path, [signing_key.public_key()]).manifest
    roles = {f.input: f.role for f in m.features}
    assert roles == {"user_id": "user", "user_age": "user", "movie_id": "item", "movie_genre": "item",
                     "hour": "context"}
    # Two item inputs with id ranges: the one named like an id is the item id.
    assert m.item_id_field == "movie_id" and m.user_id_field == "user_id"


def _scores(model, movies, genres, user="user3", age=0.4, hour=0.7):
    n = len(movies)
    rows = {"user_id": np.array([user] * n), "user_age": np.full((n, 1), age, np.float32),
            "movie_id": np.asarray(movies, np.int64), "movie_genre": np.asarray(genres, np.int64),
            "hour": np.full((n, 1), hour, np.float32)}
    return model.scores(model.predict(rows))


def test_sdk_rank_takes_plain_movie_ids_and_names_objects_by_movie_id(movie_pkg, signing_key):
    res, _ = movie_pkg
    with EdgeModel.load(res.path, [signing_key.public_key()], accelerator="cpu") as model:
        user = {"user_id": "user3", "user_age": [0.4]}
        ctx = {"hour": [0.7]}
        movies = [3, 17, 42, 8]
        # Plain ids: movie_genre has no value here, so it takes a default through the feature spec...
        with pytest.raises(InvalidInputError) as err:
            model.rank(user, movies, ctx)
        assert err.value.field == "candidates.movie_genre"  # ...not "candidates.movie_id: missing"
        rows = [{"movie_id": mv, "movie_genre": mv % N_GENRES} for mv in movies]
        ranked = model.rank(user, rows, ctx)
        want = _scores(model, movies, [mv % N_GENRES for mv in movies])
        assert sorted(r.item for r in ranked) == sorted(movies)  # ids, not positions 0..3
        by_id = {r.item: r.score for r in ranked}
        np.testing.assert_allclose([by_id[mv] for mv in movies], want, rtol=1e-6)
        assert [r.item for r in ranked] == [movies[i] for i in np.argsort(-want, kind="stable")]
        # Columns keyed by request field: named by movie_id too.
        cols = model.rank(user, {"movie_id": movies, "movie_genre": [mv % N_GENRES for mv in movies]}, ctx)
        assert [r.item for r in cols] == [r.item for r in ranked]
        # Some objects with an id and some without would mix ids and positions: refused by name.
        with pytest.raises(InvalidInputError) as err:
            model.rank(user, [{"movie_id": 3, "movie_genre": 1}, {"movie_genre": 2}], ctx)
        assert err.value.field == "candidates[1].movie_id"


@pytest.fixture(scope="module")
def movie_pkg_with_genre_default(signing_key, tmp_path_factory):
    """The same model with a default genre, so bare movie ids are enough to rank."""
    d = tmp_path_factory.mktemp("movies-default")
    (d / "features.json").write_text('{"movie_genre": {"default": 0}}')
    res = convert(_movie_model(), d / "movies-1.edgepkg", signing_key,
                  ConvertOptions(name="movies", quantize="none", formats=("tflite",), features=d / "features.json"))
    return res, d


def test_plain_ids_rank_in_the_sdk_and_on_the_edge_server(movie_pkg_with_genre_default, signing_key, tmp_path):
    from edgerec.edge_server import ServerConfig, create_app
    from edgerec.sdk.keys import public_pem

    res, d = movie_pkg_with_genre_default
    assert res.manifest.item_id_field == "movie_id"
    movies = [5, 1, 44, 23, 9]
    with EdgeModel.load(res.path, [signing_key.public_key()], accelerator="cpu") as model:
        ranked = model.rank({"user_id": "user7", "user_age": [0.2]}, movies, {"hour": [0.5]})
        want = _scores(model, movies, [0] * len(movies), user="user7", age=0.2, hour=0.5)
    np.testing.assert_allclose([r.score for r in ranked], np.sort(want)[::-1], rtol=1e-6)
    assert [r.item for r in ranked] == [movies[i] for i in np.argsort(-want, kind="stable")]

    pub = tmp_path / "publisher.pub"
    pub.write_bytes(public_pem(signing_key.public_key()))
    config = ServerConfig(model_dir=d, trusted_keys=(pub,), port=0, access_log=False, threads=1)
    client = create_app(config).test_client()
    # user.id reaches user_id through the package's user_id_field.
    body = {"user": {"id": "user7", "features": {"user_age": [0.2]}}, "candidates": movies,
            "context": {"hour": [0.5]}}
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    items = r.json["items"]
    assert [i["item"] for i in items] == [x.item for x in ranked]
    np.testing.assert_allclose([i["score"] for i in items], [x.score for x in ranked], rtol=1e-5)
    objects = {**body, "candidates": [{"movie_id": 44, "movie_genre": 3}, {"movie_id": 5, "movie_genre": 1}]}
    r = client.post("/v1/rank", json=objects)
    assert r.status_code == 200, r.text
    assert sorted(i["item"] for i in r.json["items"]) == [5, 44]


def _cli(args):
    return CliRunner().invoke(cli, ["convert", *map(str, args)])


@pytest.fixture(scope="module")
def movie_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("movie-cli")
    _movie_model().save(d / "movies.keras")
    return d, generate_keypair(d, "publisher")


def test_item_and_user_field_options_override_the_choice(movie_file):
    d, key = movie_file
    out = d / "o.edgepkg"
    res = _cli([d / "movies.keras", "--out", out, "--sign-key", key.private_path, "--quantize", "none",
                "--format", "tflite", "--item-field", "movie_genre", "--user-field", "user_age"])
    assert res.exit_code == 0, res.output
    m = Package.open(out, load_verify_key(key.public_path)).manifest
    assert (m.item_id_field, m.user_id_field) == ("movie_genre", "user_age")


@pytest.mark.parametrize(("args", "expected"), [
    (["--item-field", "user_id"], "--item-field user_id: a user feature; the item features are movie_id, "
                                  "movie_genre (set roles with --features FILE)"),
    (["--user-field", "sku"], "--user-field sku: not a model input or request field; the user features are "
                              "user_id, user_age"),
])
def test_a_field_that_is_not_of_the_role_fails_in_one_line(movie_file, tmp_path, args, expected):
    d, key = movie_file
    out = tmp_path / "x.edgepkg"
    res = _cli([d / "movies.keras", "--out", out, "--sign-key", key.private_path, "--format", "tflite", *args])
    assert res.exit_code == 1
    assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1
    assert expected in res.stderr
    assert not out.exists()


@pytest.mark.parametrize(("package_field", "server_field", "expected"), [
    ("member_id", "user_id", ["member_id"]),  # the package's choice wins over the first id-like input
    (None, "user_id", ["user_country"]),  # neither names an input: the first id-like user input
    (None, "member_id", ["member_id"]),  # the server's [features] user_id_field
    ("gone", "member_id", ["member_id"]),
])
def test_edge_server_gives_user_id_to_the_packages_user_id_field(package_field, server_field, expected):
    from types import SimpleNamespace

    from edgerec.edge_server.dataplane import DataPlane
    from edgerec.sdk.manifest import FeatureSpec, Manifest, ModelSignature, TensorSpec

    spec = (TensorSpec("user_country", "int64", (None,)), TensorSpec("member_id", "int64", (None,)))
    m = Manifest("m", 1, "now", ModelSignature(spec, (TensorSpec("score", "float32", (None, 1)),)), (),
                 features=(FeatureSpec("user_country", "user", "user_country", id_range=(0, 9)),
                           FeatureSpec("member_id", "user", "member_id", id_range=(0, 99))),
                 user_id_field=package_field)
    plane = SimpleNamespace(user_id_field=server_field)
    assert DataPlane._id_fields(plane, SimpleNamespace(manifest=m)) == expected  # type: ignore[arg-type]
