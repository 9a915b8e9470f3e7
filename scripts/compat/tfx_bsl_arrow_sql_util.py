"""Compatibility shim: tfx_bsl.arrow.sql_util for tensorflow-data-validation.

Installed by scripts/install.sh into tfx_bsl/arrow/. tensorflow-data-validation
1.16.1 (the newest for Python 3.11) imports this module at import time, but
tfx-bsl 1.21.0 no longer ships it, so `import tensorflow_data_validation`
(and with it StatisticsGen, SchemaGen, Transform and Trainer) fails. TFDV uses
it only for SQL-based slicing, which this project does not use.
"""


class RecordBatchSQLSliceQuery:

  def __init__(self, *unused_args, **unused_kwargs):
    raise NotImplementedError(
        "SQL-based slicing needs tfx_bsl.arrow.sql_util, which tfx-bsl 1.21 "
        "removed; this installation carries only a compatibility shim.")
