"""Pipeline configs for tests: every output under the test's tmp_path."""

from core.config import REPO_ROOT


def write_pipeline_config(path, tmp_path, data_root, pipeline_name, model,
                          training, bleu4_threshold, extra=""):
  """A config over configs/local.yaml with every output under tmp_path."""
  path.write_text(f"""
base: {REPO_ROOT}/configs/local.yaml
pipeline_name: {pipeline_name}
pipeline_root: {tmp_path}/pipeline_root
metadata_path: {tmp_path}/metadata.db
serving_dir: {tmp_path}/serving
data: {{root: {data_root}}}
model: {model}
training: {training}
evaluation: {{bleu4_threshold: {bleu4_threshold}}}
{extra}""")
  return str(path)
