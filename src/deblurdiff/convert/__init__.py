"""Import the released DeblurDiff model (github.com/kkkls/DeblurDiff) or any checkpoint in its format.

``load_release_checkpoint`` builds a ``DeblurDiffPipeline`` in memory; ``write_pipeline_directory``
writes a pipeline directory (``deblurdiff convert``). See ``release.py``.
"""

from deblurdiff.convert.release import DTYPES, load_release_checkpoint, write_pipeline_directory
from deblurdiff.convert.release_config import load_release_config, released_params

__all__ = ["DTYPES", "load_release_checkpoint", "load_release_config", "released_params", "write_pipeline_directory"]
