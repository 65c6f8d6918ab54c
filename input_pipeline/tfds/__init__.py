"""TFDS builders (merg_avamerg, merg_meld) and a Grain-ready `tfds.data_source` wrapper.

Importing this package registers both builders with TFDS.  Nothing here needs
TensorFlow: TFDS writes tf.Example protos with its own protobuf copy and
`tfds.data_source` decodes them with numpy.
"""
from input_pipeline.tfds.avamerg import MergAvamerg
from input_pipeline.tfds.builder import MergBuilder, MergConfig
from input_pipeline.tfds.meld import MergMeld
from input_pipeline.tfds.source import TfdsRecordSource, tfds_source, to_record

__all__ = ["MergAvamerg", "MergMeld", "MergBuilder", "MergConfig", "TfdsRecordSource",
           "tfds_source", "to_record"]
