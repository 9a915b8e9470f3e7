"""Pipeline configs for tests (every output under the test's tmp_path),
and the components a run has."""

from core.config import REPO_ROOT

# Every component of a run of the default pipeline (as run_record names them).
ALL_COMPONENTS = ["DataContractCheck", "Evaluator", "ExampleValidator",
                  "ImageCaptionExampleGen", "Pusher", "SchemaGen",
                  "StatisticsGen", "Trainer", "Transform"]


def write_pipeline_config(path, tmp_path, data_root, pipeline_name, model,
                          training, bleu4_threshold, extra="", evaluation="",
                          serving="serving"):
  """A config over configs/local.yaml with every output under tmp_path.

  `evaluation` adds keys to the evaluation section (e.g. ", gate_metric:
  cider_d"); the model is pushed to tmp_path/`serving`.
  """
  path.write_text(f"""
base: {REPO_ROOT}/configs/local.yaml
pipeline_name: {pipeline_name}
pipeline_root: {tmp_path}/pipeline_root
metadata_path: {tmp_path}/metadata.db
serving_dir: {tmp_path}/{serving}
data: {{root: {data_root}}}
model: {model}
training: {training}
evaluation: {{bleu4_threshold: {bleu4_threshold}{evaluation}}}
{extra}""")
  return str(path)
