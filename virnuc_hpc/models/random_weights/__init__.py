"""Random-weight models in the real file formats, for the demo, the tests and the benchmarks.

Compute cost does not depend on weight values, so speed measured on these is real; their outputs
are not biological results and are labelled so wherever a user can see them.
"""

from .classifier import write_random_classifier
from .dnabert import write_random_dnabert_dir
from .esm2 import write_random_esm2_checkpoint

__all__ = ["write_random_classifier", "write_random_dnabert_dir", "write_random_esm2_checkpoint"]
