"""The Evaluator's TFMA EvalConfig: corpus BLEU on raw eval examples.

The standard TFX Evaluator reads the raw tf.Examples of ExampleGen's eval
split and runs the trained model's `from_examples` signature on them. Metrics
are coco-caption corpus BLEU-1..4 (`captioner.bleu.CorpusBleu`), over the
whole eval split (overall slice only). The candidate is blessed only if
  * BLEU-4 >= `bleu4_threshold` (value threshold), and
  * BLEU-4 >= BLEU-4 of the latest blessed model (change threshold, absolute
    -1e-10 so that an equal score, e.g. the same model, still passes).
With no blessed model yet (first run) TFX drops the change threshold
(`update_eval_config_with_defaults(..., rubber_stamp=True)` in its executor);
with one, it copies our single unnamed ModelSpec into "candidate" and
"baseline" specs, which is why the spec below has no name and no is_baseline.

How TFMA 0.52 feeds the signature (tensorflow_model_analysis/utils/
model_util.py, ModelSignaturesDoFn._batch_reducible_process and get_inputs):
  * `get_input_specs(model, signature_name)` reads the signature's inputs.
    If there is exactly one, of dtype tf.string, and its name is NOT a feature
    of the decoded examples, no features are fed:
        single_input.dtype == tf.string
        and find_input_name_in_features(set(features), single_input_name)
        is None
    and the raw records are passed positionally as a 1-D batch:
        serialized_examples = serialized_examples.flatten()
        ...
        outputs = signature(tf.constant(inputs, dtype=tf.string))
    So the contract is: one input, tf.string, shape [None] (its name is free,
    `examples` here, but must not be a feature name such as `captions` or
    `image_features`, or TFMA would feed that feature instead).
  * Every output must have the batch size as first dimension
    (`_check_shape`); `caption` is tf.string [None]. With a single output
    TFMA stores the array itself as the prediction (prefer_dict_outputs=
    False); with several, ModelSpec.prediction_key="caption" selects it.
  * A SavedModel without keras_metadata.pb is TF_GENERIC
    (`get_model_type`); TFX's Evaluator then loads
    `path_utils.serving_model_path(model.uri)`.
  * Labels: ModelSpec.label_key="captions" makes TFMA's LabelsExtractor take
    the raw `captions` feature (all references of the image, any count);
    each example's metric inputs then hold a 1-D bytes array of them.
"""

from tensorflow_model_analysis.proto import config_pb2

from captioner import bleu

# The model's signature that maps serialized raw tf.Examples to captions.
SIGNATURE_NAME = "from_examples"
# Raw tf.Example feature with all reference captions of an image.
LABEL_KEY = "captions"
# Output of the signature with one generated caption per example.
PREDICTION_KEY = "caption"
# A candidate may score this much below the baseline and still be blessed:
# zero, up to float noise.
CHANGE_TOLERANCE = 1e-10


def _bleu4_threshold(bleu4_threshold: float) -> config_pb2.MetricThreshold:
  return config_pb2.MetricThreshold(
      value_threshold=config_pb2.GenericValueThreshold(
          lower_bound={"value": bleu4_threshold}),
      change_threshold=config_pb2.GenericChangeThreshold(
          direction=config_pb2.MetricDirection.HIGHER_IS_BETTER,
          absolute={"value": -CHANGE_TOLERANCE}))


def make_eval_config(bleu4_threshold: float,
                     signature_name: str = SIGNATURE_NAME,
                     ) -> config_pb2.EvalConfig:
  """EvalConfig for the Evaluator: BLEU-1..4, gating on BLEU-4.

  Args:
    bleu4_threshold: Lowest corpus BLEU-4 (in [0, 1]) that can be blessed.
    signature_name: Signature taking serialized raw tf.Examples (`examples`,
      tf.string [None]) and returning {"caption": tf.string [None]}.

  Returns:
    A tfma.EvalConfig (config_pb2.EvalConfig: TFMA 0.52 does not export
    `tfma.EvalConfig` itself unless TFX has been imported) with one
    unnamed ModelSpec, the overall slice, metrics bleu_1..bleu_4 and, on
    bleu_4, a value threshold (lower bound `bleu4_threshold`) and a change
    threshold (not lower than the baseline model's bleu_4).
  """
  metrics = [
      bleu.metric_config(
          order,
          threshold=_bleu4_threshold(bleu4_threshold)
          if order == bleu.MAX_ORDER else None)
      for order in bleu.ORDERS
  ]
  return config_pb2.EvalConfig(
      model_specs=[
          config_pb2.ModelSpec(
              signature_name=signature_name,
              label_key=LABEL_KEY,
              prediction_key=PREDICTION_KEY)
      ],
      slicing_specs=[config_pb2.SlicingSpec()],
      metrics_specs=[config_pb2.MetricsSpec(metrics=metrics)])
