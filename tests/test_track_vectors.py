"""Track vectors: tokenization, GloVe files, learned word vectors, columns, two-tower."""

import numpy as np
import pandas as pd
import pytest

import tfrec_music  # noqa: F401

from conftest import run_python
from tfrec_music.data import synthetic
from tfrec_music.export.retrieval import save_candidates
from tfrec_music.models import track_vectors as tv
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare


@pytest.fixture(scope="module")
def tiny():
  catalogue = synthetic.generate("tiny", seed=0)
  return prepare(catalogue.tables, PrepareConfig(cold_user_share=0.0))


def _with_items(prepared, items):
  import dataclasses
  return dataclasses.replace(prepared, items=items)


def test_tokenize_punctuation_case_unicode_stop_words():
  assert tv.tokenize("Don't STOP the Café-Music, naïve!") == ["don", "stop", "café", "music",
                                                             "naïve"]
  # casefold: ß -> ss; NFKC: the ligature "ﬁ" -> "fi", full-width letters -> ASCII.
  assert tv.tokenize("STRASSE Straße ﬁre ＲＯＣＫ") == ["strasse", "strasse", "fire", "rock"]
  assert tv.tokenize("東京 の 夜…ROCK&roll") == ["東京", "の", "夜", "rock", "roll"]
  assert tv.tokenize(None) == [] and tv.tokenize(float("nan")) == []
  assert tv.tokenize("the and of you") == []


def test_glove_file_vectors_are_token_means(tmp_path, tiny):
  path = tmp_path / "glove.txt"
  # "Rock" folds to "rock"; the second "rock" line is ignored (first wins).
  path.write_text("Rock 1 0\nroll 0 2\nrock 9 9\ncafé 4 4\n", encoding="utf-8")
  items = pd.DataFrame({"item_id": ["a", "b", "c"],
                        "text": ["ROCK and roll!", "the café", "nothing known"]})
  prepared = _with_items(tiny, items)
  out = tv.text_track_vectors(prepared, str(path), text_columns=("text",))
  # a: mean([1, 0], [0, 2]) = [0.5, 1]; b: [4, 4]; c: no known token -> zeros.
  np.testing.assert_allclose(out.vectors, [[0.5, 1.0], [4.0, 4.0], [0.0, 0.0]])
  assert out.has_vector.tolist() == [True, True, False]
  assert out.source.startswith("text:glove:")


def test_glove_file_errors_name_file_and_line(tmp_path):
  bad = tmp_path / "bad.txt"
  bad.write_text("rock 1 0\nroll 0\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.txt, line 2: 1 values, but earlier lines have 2"):
    tv.WordVectors.from_glove(str(bad))
  bad.write_text("rock 1 x\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"line 1: the values after the word must be numbers"):
    tv.WordVectors.from_glove(str(bad))
  # A word2vec-style header is skipped.
  bad.write_text("2 2\nrock 1 0\nroll 0 1\n", encoding="utf-8")
  assert tv.WordVectors.from_glove(str(bad)).words == ["rock", "roll"]


def _genre_separation(prepared, vectors):
  """Mean cosine of same-genre track pairs minus that of different-genre pairs."""
  v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
  sim = v @ v.T
  genre = prepared.items["parent_genre"].to_numpy()
  same = genre[:, None] == genre[None, :]
  off = ~np.eye(len(genre), dtype=bool)
  return sim[same & off].mean() - sim[~same].mean()


@pytest.mark.parametrize("word_vectors", ["colisten", "cooccurrence"])
def test_learned_word_vectors_separate_genres(tiny, word_vectors):
  out = tv.track_vectors(tiny, "text", word_vectors=word_vectors, word_dim=16)
  assert out.vectors.shape == (tiny.n_items, 16)
  assert out.has_vector.mean() > 0.95
  # Tracks of one parent genre share lyric words, so their vectors are closer.
  assert _genre_separation(tiny, out.vectors) > 0.1


def test_column_source_parses_lists_and_strings(tiny):
  items = pd.DataFrame({"item_id": ["a", "b", "c", "d"],
                        "vec": [[1.0, 2.0], "3|4", None, np.array([5.0, 6.0])]})
  out = tv.track_vectors(_with_items(tiny, items), "column", vector_column="vec")
  np.testing.assert_allclose(out.vectors, [[1, 2], [3, 4], [0, 0], [5, 6]])
  assert out.has_vector.tolist() == [True, True, False, True]
  items.loc[3, "vec"] = "1|2|3"
  with pytest.raises(ValueError, match=r"row 4 .*column `vec`: 3 values"):
    tv.track_vectors(_with_items(tiny, items), "column", vector_column="vec")
  with pytest.raises(ValueError, match=r"needs the items column `nope`"):
    tv.track_vectors(tiny, "column", vector_column="nope")
  with pytest.raises(ValueError, match=r"`track_vectors` should be one of"):
    tv.track_vectors(tiny, "lyrics")


def test_two_tower_source_trains_and_reads_exports(tiny, tmp_path):
  out = tv.track_vectors(tiny, "two_tower", job_dir=str(tmp_path / "job"),
                         two_tower_preset="tiny", two_tower_overrides={"epochs": 1})
  assert out.vectors.shape == (tiny.n_items, 32) and out.has_vector.all()
  assert np.isfinite(out.vectors).all()
  # An export's candidates, in another order and missing one track, map back by id.
  order = np.arange(tiny.n_items)[::-1][:-1]
  save_candidates(str(tmp_path / "export" / "candidates"), tiny.item_ids[order],
                  out.vectors[order])
  read = tv.track_vectors(tiny, "two_tower", two_tower_export=str(tmp_path / "export"))
  np.testing.assert_allclose(read.vectors[read.has_vector], out.vectors[read.has_vector])
  assert (~read.has_vector).sum() == 1 and not read.has_vector[0]


def test_track_vectors_round_trip_in_fresh_process(tiny, tmp_path):
  out = tv.track_vectors(tiny, "text", word_vectors="cooccurrence", word_dim=8)
  out.save(str(tmp_path / "tv"))
  text = run_python(f"""
import numpy as np
from tfrec_music.models.track_vectors import TrackVectors
t = TrackVectors.load({str(tmp_path / 'tv')!r})
print(t.source, t.vectors.shape, float(t.vectors.sum()), int(t.has_vector.sum()), t.item_ids[3])
""")
  assert text.split()[0] == out.source
  assert f"{float(out.vectors.sum())}" in text and tiny.item_ids[3] in text
