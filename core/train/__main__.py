"""`python -m core.train <run folder>`: run one run folder to its end (core.runs starts this)."""
import sys

from core.train import runtime

if len(sys.argv) != 2:
    sys.exit("usage: python -m core.train <run folder>")
sys.exit(runtime.main(sys.argv[1]))
