"""Integrations with other libraries (optional extras; the core never imports them).

* :mod:`fprune.integrations.hf_oneshot`: one-shot pruning of Hugging Face model folders.
* :mod:`fprune.integrations.hf_slim`: saving and reloading slimmed Hugging Face models.
"""

__all__ = []  # the integrations are submodules, each imported on its own
