"""The standard TFX Evaluator plus a visual report in its artifact.

CaptionEvaluator is tfx.components.Evaluator with one change: after TFMA has
computed the metrics and the blessing (the base executor, untouched), the
executor captions a fixed sample of eval images with the candidate model and
writes `report.html` into the evaluation artifact:

  <evaluation>/report.html               corpus metrics, blessing, the table
  <evaluation>/report_images/<id>.jpg    thumbnails, linked relatively

The corpus table holds every metric TFMA computed (BLEU-1..4, CIDEr-D,
ROUGE-L) for the candidate and, if any, the baseline. Each image row: the
image, the generated caption, the reference captions and the image's own
BLEU-1, BLEU-4, CIDEr-D and ROUGE-L (the same `core.scoring` definitions,
on one image; BLEU-4 of a single short caption is often 0). The image's
CIDEr-D uses the document frequencies of the whole eval split's references
(the reader passes over the whole split anyway to pick the sample), so the
mean of it over all eval images would be the corpus CIDEr-D.
The page opens from the artifact folder (local or copied from gs://).
"""

import html
import io
import json
import os
import time
from typing import Any, Dict, List

from absl import logging
from PIL import Image
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_model_analysis.proto import config_pb2
# Not through tfx.v1, which imports its Google Cloud extensions
# (pipeline/pipeline.py).
from tfx.components.evaluator.component import Evaluator
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import io_utils
from tfx.utils import json_utils
from tfx.utils import path_utils
from tfx.utils import proto_utils

from core import features
from core import scoring
from ingest import readers

REPORT_FILE = "report.html"
IMAGES_DIR = "report_images"
# Images shown; the first ones of the eval split by image id.
REPORT_IMAGES = 24
THUMBNAIL_SIDE = 256


def corpus_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
  """{model name: {metric: value}} of the overall slice ("" = the only model).

  With a baseline, TFMA names the models "candidate" and "baseline".
  """
  scores: Dict[str, Dict[str, float]] = {}
  for metrics in tfma.load_metrics(evaluation_uri):
    for kv in metrics.metric_keys_and_values:
      if kv.key.is_diff or not kv.value.HasField("double_value"):
        continue
      scores.setdefault(kv.key.model_name, {})[kv.key.name] = (
          kv.value.double_value.value)
  return scores


def _sample_examples(examples_artifact, split: str, count: int):
  """(the `count` examples of `split` with the smallest image ids, CIDEr-D's
  document frequencies over the references of the whole split)."""
  split_dir = artifact_utils.get_split_uri([examples_artifact], split)
  files = sorted(tf.io.gfile.glob(os.path.join(split_dir, "*")))
  keyed, references = [], []
  for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    serialized = record.numpy()
    feature = tf.train.Example.FromString(serialized).features.feature
    references.append([c.decode("utf-8")
                       for c in feature[features.CAPTIONS].bytes_list.value])
    keyed.append((feature[features.IMAGE_ID].int64_list.value[0],
                  serialized))
  keyed.sort(key=lambda pair: pair[0])
  return ([serialized for _, serialized in keyed[:count]],
          scoring.document_frequency(references))


def _thumbnail(path: str, out_path: str) -> str:
  """Writes a JPEG thumbnail of the image at `path`; '' or why it failed."""
  try:
    with Image.open(io.BytesIO(readers.read_bytes(path))) as image:
      image = image.convert("RGB")
      image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
      buffer = io.BytesIO()
      image.save(buffer, format="JPEG", quality=85)
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"
  with tf.io.gfile.GFile(out_path, "wb") as f:
    f.write(buffer.getvalue())
  return ""


def _rows(model_dir: str, serialized: List[bytes], output_uri: str,
          document_frequency=None):
  model = tf.saved_model.load(model_dir)
  captions = model.signatures[features.FROM_EXAMPLES](
      examples=tf.constant(serialized, tf.string))[features.CAPTION]
  tf.io.gfile.makedirs(os.path.join(output_uri, IMAGES_DIR))
  rows = []
  for record, caption in zip(serialized, captions.numpy()):
    feature = tf.train.Example.FromString(record).features.feature
    image_id = feature[features.IMAGE_ID].int64_list.value[0]
    references = [c.decode("utf-8")
                  for c in feature[features.CAPTIONS].bytes_list.value]
    caption = caption.decode("utf-8")
    scores = scoring.image_scores(caption, references, document_frequency)
    link = f"{IMAGES_DIR}/{image_id}.jpg"
    problem = "no image path in the example"
    if features.IMAGE_PATH in feature:
      problem = _thumbnail(
          feature[features.IMAGE_PATH].bytes_list.value[0].decode(),
                           os.path.join(output_uri, link))
    rows.append({
        "image_id": image_id,
        "file_name": feature[features.FILE_NAME].bytes_list.value[0].decode(),
        "image": "" if problem else link, "image_problem": problem,
        "caption": caption, "references": references,
        "bleu_1": scores["bleu_1"], "bleu_4": scores["bleu_4"],
        "cider_d": scores.get(scoring.CIDER_D, float("nan")),
        "rouge_l": scores[scoring.ROUGE_L]})
  return rows


_STYLE = """
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 6px; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.caption { font-weight: bold; }
.bad { color: #a00; }
"""


def render_html(metrics: Dict[str, Dict[str, float]], blessed: bool,
                failures: List[str], rows: List[Dict[str, Any]]) -> str:
  """The report page; every link is relative to the artifact folder."""
  esc = html.escape
  names = sorted({name for scores in metrics.values() for name in scores})
  models = sorted(metrics, key=lambda m: (m != "candidate", m))
  head = "".join(f"<th>{esc(n)}</th>" for n in names)
  metric_rows = "".join(
      f"<tr><td>{esc(model or 'model')}</td>" + "".join(
          f"<td class=num>{metrics[model].get(n, float('nan')):.4f}</td>"
          for n in names) + "</tr>" for model in models)
  verdict = ("<p>Blessed: yes.</p>" if blessed else
             "<p class=bad>Blessed: no.</p><ul>" + "".join(
                 f"<li>{esc(f)}</li>" for f in failures) + "</ul>")
  table = []
  for row in rows:
    picture = (f'<img src="{esc(row["image"])}" alt="{esc(row["file_name"])}">'
               if row["image"] else
               f'<span class=bad>{esc(row["image_problem"])}</span>')
    refs = "".join(f"<li>{esc(r)}</li>" for r in row["references"])
    table.append(
        f"<tr><td>{picture}<br>{esc(row['file_name'])} "
        f"(id {row['image_id']})</td>"
        f"<td class=caption>{esc(row['caption'])}</td><td><ul>{refs}</ul></td>"
        f"<td class=num>{row['bleu_1']:.3f}</td>"
        f"<td class=num>{row['bleu_4']:.3f}</td>"
        f"<td class=num>{row.get('cider_d', float('nan')):.3f}</td>"
        f"<td class=num>{row.get('rouge_l', float('nan')):.3f}</td></tr>")
  return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Caption evaluation</title>
<style>{_STYLE}</style></head><body>
<h1>Caption evaluation</h1>
<h2>Corpus metrics (eval split, coco-caption BLEU-1..4, CIDEr-D, ROUGE-L)</h2>
<table><tr><th></th>{head}</tr>{metric_rows}</table>
{verdict}
<h2>{len(rows)} eval images (smallest ids), candidate model</h2>
<p>Per-image figures are the same definitions on one image, tokenized as
coco-caption tokenizes; an unsmoothed BLEU-4 of one short caption is often
0. CIDEr-D uses the document frequencies of the whole eval split's
references (the corpus CIDEr-D is its mean over the split).</p>
<table><tr><th>image</th><th>generated</th><th>references</th>
<th>BLEU-1</th><th>BLEU-4</th><th>CIDEr-D</th><th>ROUGE-L</th></tr>
{''.join(table)}
</table></body></html>
"""


def _validation(output_uri: str):
  result = tfma.load_validation_result(output_uri)
  failures = []
  for slice_failure in result.metric_validations_per_slice:
    for failure in slice_failure.failures:
      failures.append(f"{failure.metric_key.name} "
                      f"({failure.metric_key.model_name or 'model'}): "
                      f"{failure.message}")
  return result.validation_ok, failures


def _eval_image_count(examples_artifact, split: str) -> int:
  """Images in the split by ImageCaptionExampleGen's count (0: unknown)."""
  key = f"{split}_processed"
  if examples_artifact.has_custom_property(key):
    return examples_artifact.get_int_custom_property(key)
  return 0


def _summary(metrics: Dict[str, Dict[str, float]], key: str,
             label: str) -> str:
  parts = [f"{label} {scores[key]:.4f}" + (f" ({name})" if name else "")
           for name, scores in sorted(metrics.items(),
                                      key=lambda m: (m[0] != "candidate", m[0]))
           if key in scores]
  return ", ".join(parts) or f"no {label}"


def _bleu4_summary(metrics: Dict[str, Dict[str, float]]) -> str:
  return _summary(metrics, "bleu_4", "BLEU-4")


def _cider_d_summary(metrics: Dict[str, Dict[str, float]]) -> str:
  return _summary(metrics, scoring.CIDER_D, "CIDEr-D")


def signature_names(model_dir: str) -> List[str]:
  """The signatures a SavedModel serves, read from saved_model.pb (without
  loading the model)."""
  saved = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(os.path.join(model_dir, "saved_model.pb"),
                         "rb") as f:
    saved.ParseFromString(f.read())
  # Without the initializer's entry (__saved_model_init_op).
  return sorted(name for name in saved.meta_graphs[0].signature_def
                if not name.startswith("__"))


def eval_config_for_models(eval_config_json: str,
                           model_dirs: List[str]) -> str:
  """The EvalConfig (JSON, as TFX passes it) to run on these models: as
  given, unless a model lacks the signature it names and it names
  `from_cached_features` (a last blessed model exported before that
  signature existed): then `from_examples`, which every exported model has,
  for all of them (TFX derives the candidate's and the baseline's specs
  from one)."""
  eval_config = config_pb2.EvalConfig()
  proto_utils.json_to_proto(eval_config_json, eval_config)
  missing = [d for d in model_dirs
             if features.FROM_CACHED_FEATURES not in signature_names(d)]
  if not missing:
    return eval_config_json
  for spec in eval_config.model_specs:
    if spec.signature_name == features.FROM_CACHED_FEATURES:
      spec.signature_name = features.FROM_EXAMPLES
  print(f"Evaluator: {', '.join(missing)} has no "
        f"{features.FROM_CACHED_FEATURES} signature (exported by older "
        f"code): scoring through {features.FROM_EXAMPLES}", flush=True)
  return proto_utils.proto_to_json(eval_config)


class Executor(evaluator_executor.Executor):
  """TFX's Evaluator executor, then the HTML report.

  Prints what it does to the console: TFMA's Beam job reports no progress
  of its own, so one line before it (how many images, which models) and one
  after (time taken, BLEU-4, blessed or not), then the report's captioning.
  """

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    splits = json_utils.loads(
        exec_properties.get(standard_component_specs.EXAMPLE_SPLITS_KEY)
        or "null") or ["eval"]
    examples = artifact_utils.get_single_instance(
        input_dict[standard_component_specs.EXAMPLES_KEY])
    count = _eval_image_count(examples, splits[0])
    baseline = bool(input_dict.get(
        standard_component_specs.BASELINE_MODEL_KEY))
    print(f"Evaluator: TFMA captions the {count or 'all'} {splits[0]} images "
          f"with the candidate{' and the last blessed model' if baseline else ''}"
          " and scores BLEU, CIDEr-D and ROUGE-L (one Beam job; no progress "
          "until it ends)",
          flush=True)
    model_dirs = [
        path_utils.serving_model_path(artifact_utils.get_single_uri(
            input_dict[key]))
        for key in (standard_component_specs.MODEL_KEY,
                    standard_component_specs.BASELINE_MODEL_KEY)
        if input_dict.get(key)]
    eval_config = exec_properties.get(
        standard_component_specs.EVAL_CONFIG_KEY)
    if eval_config:
      exec_properties = {
          **exec_properties,
          standard_component_specs.EVAL_CONFIG_KEY: eval_config_for_models(
              eval_config, model_dirs)}
    started = time.time()
    super().Do(input_dict, output_dict, exec_properties)
    output_uri = artifact_utils.get_single_uri(
        output_dict[standard_component_specs.EVALUATION_KEY])
    metrics = corpus_metrics(output_uri)
    blessed, failures = _validation(output_uri)
    print(f"Evaluator: TFMA done in {time.time() - started:.0f} s: "
          f"{_bleu4_summary(metrics)}; {_cider_d_summary(metrics)}; "
          f"blessed: {'yes' if blessed else 'no'}",
          flush=True)
    model_dir = path_utils.serving_model_path(
        artifact_utils.get_single_uri(
            input_dict[standard_component_specs.MODEL_KEY]))
    print(f"Evaluator: report.html: captioning the {REPORT_IMAGES} "
          f"{splits[0]} images with the smallest ids with the candidate",
          flush=True)
    started = time.time()
    sample, document_frequency = _sample_examples(examples, splits[0],
                                                  REPORT_IMAGES)
    rows = _rows(model_dir, sample, output_uri, document_frequency)
    page = render_html(metrics, blessed, failures, rows)
    io_utils.write_string_file(os.path.join(output_uri, REPORT_FILE), page)
    with tf.io.gfile.GFile(os.path.join(output_uri, "report.json"), "w") as f:
      json.dump(rows, f, indent=1)
    logging.info("CaptionEvaluator wrote %s",
                 os.path.join(output_uri, REPORT_FILE))
    print(f"Evaluator: report.html written in {time.time() - started:.0f} s",
          flush=True)
    print(f"Evaluation report: {os.path.join(output_uri, REPORT_FILE)}",
          flush=True)


class CaptionEvaluator(Evaluator):
  """tfx.components.Evaluator whose executor also writes report.html."""

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
