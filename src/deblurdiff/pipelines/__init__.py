"""Ray Data pipelines: image corpora -> (sharp, blurry) pairs, as WebDataset shards or a training stream.

Public API::

    from deblurdiff.pipelines import run_synth, training_dataset, list_sources

    run_synth(["photos/"], "pairs/", recipe="realistic", crop=512, seed=0)   # `deblurdiff synth`
    plan_restore(["blurry/"], "restored/", model="tiny-small-handheld").run()   # `deblurdiff deblur`
    ds = training_dataset(shards="pairs/")          # or images="photos/" (on-the-fly synthesis)
    # in a Ray Train worker:
    # for batch in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=8):
    #     batch["sharp"], batch["blurry"]            # float32 (B, 3, H, W) in [0, 1]

Modules: ``sources`` (listing any filesystem), ``plan`` (samples, seeds, shards), ``stages``
(decode/crop, synthesize, encode), ``shard_format`` (member names, sample writer, the reader), ``sink``
(tar shards, manifest), ``synth`` (the shard job), ``restore`` (the archive restore job),
``stream`` (the training source), ``_pool`` (actor-pool sizing).
"""

from deblurdiff.pipelines.sources import Corpus, Skipped, Source, list_sources
from deblurdiff.pipelines.restore import RestoreSummary, plan_restore
from deblurdiff.pipelines.stream import training_dataset
from deblurdiff.pipelines.synth import SynthSummary, run_synth

__all__ = ["run_synth", "SynthSummary", "plan_restore", "RestoreSummary", "training_dataset", "list_sources", "Corpus", "Source", "Skipped"]
