"""Training methods, one module each (sft.py, ...), each a thin layer over a TRL trainer.

The job runner (`python -m tunelab.jobs <job id>`) runs one run folder through runtime.run_job; see runtime.py for what every method shares
and config.py for the YAML keys.
"""
