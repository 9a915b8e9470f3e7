"""The names every stage shares: tf.Example features, transformed features,
serving signatures and their inputs and outputs, feature dtypes and limits.

Like the TFX taxi template's features.py: a stage that writes a feature and
the stage that reads it both name it from here. The special tokens of the
vocabulary are in `core.text`, beside the normalization they belong to.
"""

# -- Raw tf.Examples: what ExampleGen and `captioner cache-features` write,
#    and what the Evaluator feeds the model (ingest/feature_cache.py).
IMAGE_ID = "image_id"                  # int64 [1]
FILE_NAME = "file_name"                # bytes [1]
IMAGE_PATH = "image_path"              # bytes [1], where it was read
IMAGE_FEATURES = "image_features"      # bytes [1], the (h, w, c) grid
IMAGE_FEATURES_SHAPE = "image_features_shape"  # int64 [3]: h, w, c
CAPTIONS = "captions"                  # bytes [n], every reference caption

# -- Transformed examples: Transform's output, the Trainer's input
#    (trainer/preprocessing.py). IMAGE_ID, IMAGE_FEATURES and
#    IMAGE_FEATURES_SHAPE pass through.
CAPTION_TOKENS = "caption_tokens"      # int64, [START] w... [END] per caption
CAPTION_LENGTHS = "caption_lengths"    # int64, tokens in each caption

# -- Serving signatures of the exported SavedModel (trainer/export.py).
SERVING_DEFAULT = "serving_default"    # image bytes -> caption
FROM_EXAMPLES = "from_examples"        # raw tf.Examples -> caption
# The cache's feature bytes -> caption (the Evaluator: its input is named
# IMAGE_FEATURES, so TFMA feeds that feature by name; components/
# caption_metrics.py says why).
FROM_CACHED_FEATURES = "from_cached_features"
FROM_FEATURES = "from_features"        # cached feature grids -> caption
SAMPLE = "sample"                      # image bytes, temperature, seed
BEAM_SEARCH = "beam_search"            # image bytes, beam_width, penalty
ATTENTION = "attention"                # image bytes -> tokens and attention

# Their inputs and outputs.
IMAGE_BYTES = "image_bytes"            # string [b]: JPEG/PNG/... bytes
EXAMPLES = "examples"                  # string [b]: serialized tf.Examples
CAPTION = "caption"                    # string [b]: the generated caption
TOKENS = "tokens"                      # string [b, t]: its words
ATTENTION_MAP = "attention"            # float32 [b, t, h, w]

# -- Feature dtypes a cache may hold; the model always computes in float32.
FEATURE_DTYPES = ("float16", "float32")
DEFAULT_FEATURE_DTYPE = "float16"

# -- Limits. Decoding refuses bigger images (a decompression-bomb guard), in
#    the feature cache and in the served graph alike.
MAX_PIXELS = 50_000_000
