"""`TwoTowerFamily`: the two-tower family of the training pipeline (in memory or `--stream`)."""

from tfrec_music import io
from tfrec_music.models.two_tower.core import TwoTowerCore
from tfrec_music.models.two_tower.materialize import materialize
from tfrec_music.models.two_tower.stream import stream_fit


class TwoTowerFamily(TwoTowerCore):
  """Two-tower retrieval plugged into the training pipeline."""

  @classmethod
  def stream_train(cls, data_dir, config, job_dir, *, checkpoint_every=0, backup_dir=None):
    """`--stream`: materializes the Parquet shards once as TFRecords, then streams them.

    The TFRecord shards go to `<job_dir>/stream_shards` and are reused by a
    rerun on the same files (see `two_tower.materialize`); training
    and evaluation (a sample of users, each user's last two plays held out)
    are `two_tower.stream.stream_fit`'s, the export its `stream_export`.

    Raises:
      ValueError: `history_length` 0 (the shards always carry a history).
    """
    if config.history_length == 0:
      raise ValueError("`--stream` trains on materialized histories and needs "
                       "`history_length` >= 1; history off (0) is in-memory training only.")
    shard_dir = io.join(job_dir, "stream_shards")
    manifest = materialize(data_dir, shard_dir, config.history_length, seed=config.seed)
    kept = {}
    summary = stream_fit(
        shard_dir, config, job_dir, checkpoint_every=checkpoint_every, backup_dir=backup_dir,
        exporter=lambda save_fn, _: kept.setdefault("save", save_fn) and None)
    summary["materialization"] = {k: manifest[k] for k in ("rows", "reused") if k in manifest}
    summary["materialization_reused"] = bool(manifest.get("reused"))
    summary["materialized_rows"] = dict(manifest["rows"])
    model = {k: v for k, v in summary.items()
             if k.count("/") >= 2 and isinstance(v, (int, float))}
    return {"model": model, "popularity": dict(summary["popularity"])}, summary, kept["save"]
