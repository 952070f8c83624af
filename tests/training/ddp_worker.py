"""Run by `test_distributed.py` under torchrun (2 processes, gloo): `kava train` three times
in one process group — straight through, stopped after K steps, then resumed with --resume.
Not a test module itself."""

import sys

from kava_cli.main import main

straight, split, k = sys.argv[1:4]
main(["train", straight])
main(["train", split, "--stop-after", k])
main(["train", split, "--resume"])
