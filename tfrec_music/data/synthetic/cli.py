"""Command line: `python -m tfrec_music.data.synthetic [--preset P] [--seed S] [--out DIR]`."""

import argparse
import logging
import resource
import time
from typing import Optional, Sequence

from tfrec_music.data.synthetic.card import format_data_card
from tfrec_music.data.synthetic.catalogue import generate
from tfrec_music.data.synthetic.config import PRESETS
from tfrec_music.data.synthetic.config import STREAM_ONLY_PRESETS
from tfrec_music.data.synthetic.writer import write_large


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Command line: generate a preset, print its data card and timing.

  With `--out`, the catalogue is streamed to that folder by `write_large`
  (required for `--preset large`); without it, it is generated in memory.

  Args:
    argv: Arguments (default: `sys.argv[1:]`).

  Returns:
    The data card.
  """
  parser = argparse.ArgumentParser(
      prog="python -m tfrec_music.data.synthetic",
      description="Generate the synthetic music catalogue.")
  parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None,
                      help="Folder to stream the catalogue to (parquet shards).")
  parser.add_argument("--shard-rows", type=int, default=1_000_000)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  t0 = time.time()
  if args.out:
    card = write_large(args.out, preset=args.preset, seed=args.seed,
                       shard_rows=args.shard_rows)
  elif args.preset in STREAM_ONLY_PRESETS:
    parser.error(f"--preset {args.preset} is streamed to files: pass --out DIR.")
  else:
    card = generate(args.preset, seed=args.seed).data_card()
  seconds = time.time() - t0
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  print(format_data_card(card))
  print(f"  generated in  {seconds:.2f} s, peak RSS {peak_mb:.0f} MB"
        + (f", written to {args.out}" if args.out else ""))
  return card
