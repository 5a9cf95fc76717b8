"""Playlist continuation by matrix factorization (`--model playlist_mf`).

The recommender idea: a playlist and a track each get a vector and a bias;
a track's vector is its own plus its content's (artist, album, title words,
tags, genre), a playlist's is its own plus its name tokens', and the
playlist's tracks are choices among the catalogue's,

    P(track | playlist) = softmax over tracks of dot(p, t) + b_t

(or, with `loss="bce"`, sigmoid(dot(p, t) + b_p + b_t) against sampled
negatives). A playlist never seen in training is folded in: with the tracks
frozen, its vector solves the same per-playlist objective from its seed
tracks, pulled toward its name's vector; a name-only playlist gets its name's
vector; one with neither known seeds nor a known name token gets the
popularity ranking. The scores add the seeds' co-occurrence in the training
playlists (the mean over the seeds of each track's cosine similarity with the
seed, weighted by a value chosen on validation): the factors summarize a
playlist in a few numbers, the co-occurrence keeps the pairs they smooth away.

Modules: `config` (hyperparameters, presets, flags, search space), `tokens`
(the words of names and titles), `cooccurrence` (the seeds' co-occurrence
term), `network` (the training model), `serving`
(fold-in and the exported module) and `family` (tables, fit, scoring,
evaluation, export). Serving fallbacks are tested in
`tests/test_serving_fallbacks_playlist.py`.
"""

from tfrec_music.models.playlist_mf.config import ITEM_FEATURES
from tfrec_music.models.playlist_mf.config import LOSSES
from tfrec_music.models.playlist_mf.config import PlaylistMFConfig
from tfrec_music.models.playlist_mf.config import SAMPLING
from tfrec_music.models.playlist_mf.family import PlaylistMFFamily
from tfrec_music.models.playlist_mf.network import Bag
from tfrec_music.models.playlist_mf.network import PlaylistMFModel
from tfrec_music.models.playlist_mf.network import negative_distribution
from tfrec_music.models.playlist_mf.serving import PlaylistContinuation
from tfrec_music.models.playlist_mf.serving import save_continuation
from tfrec_music.models.playlist_mf.tokens import name_tokens
from tfrec_music.models.playlist_mf.tokens import pad_indices
from tfrec_music.models.playlist_mf.tokens import token_codes

__all__ = [
    "Bag",
    "ITEM_FEATURES",
    "LOSSES",
    "PlaylistContinuation",
    "PlaylistMFConfig",
    "PlaylistMFFamily",
    "PlaylistMFModel",
    "SAMPLING",
    "name_tokens",
    "negative_distribution",
    "pad_indices",
    "save_continuation",
    "token_codes",
]
