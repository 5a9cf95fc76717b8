"""`python -m tfrec_music.data.synthetic`: generate a preset (see `cli.main`)."""

from tfrec_music.data.synthetic.cli import main

if __name__ == "__main__":
  main()
