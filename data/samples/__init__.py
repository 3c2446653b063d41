"""tunelab's own sample data, shipped inside the package as `tunelab.samples`, so that an installed copy
(not only a checkout) has it: a support bot for the fictional "Acme Router" (acme_router_sft.jsonl), its
customers' questions (prompts.jsonl), and general web-style text for the forgetting check
(general_text.jsonl). All written for this project."""
from importlib.resources import files
from pathlib import Path


def path(name: str) -> Path:
    """The sample file `name` as a path (the package is installed as plain files, never zipped)."""
    return Path(str(files(__name__) / name))
