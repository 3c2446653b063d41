"""Training methods, one module each (sft.py, ...), each a thin layer over a TRL trainer.

`python -m core.train <run folder>` runs one run folder; see runtime.py for what every method shares
and config.py for the YAML keys.
"""
