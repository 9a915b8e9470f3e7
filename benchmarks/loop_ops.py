"""Counts the ops of every decoding loop body in an exported SavedModel.

  python benchmarks/loop_ops.py MODEL_DIR

A batch-1 decoding step costs what its ops cost to dispatch (BENCHMARKS.md,
"Decoding"), so the count per loop body, by op type, says where a step's
time goes. Prints each decoding loop body of saved_model.pb's function
library (`base.LOOP_NAME`; an export from before it was named: each
`while_body` function with more than 50 nodes, which leaves map_fn's image
loops out): its node count, the count without Const / Identity / NoOp, and
the 40 commonest op types. Each decoder (greedy, sampling, beam search)
is two loops of the same body, lowered then functional
(`base.decoding_loops`).
"""

import argparse
import collections
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from tensorflow.core.protobuf import saved_model_pb2

from trainer.models import base

_FREE = ("Const", "Identity", "NoOp")


def loop_bodies(model_dir):
  """{function name: Counter of op types} of the decoding loop bodies."""
  saved = saved_model_pb2.SavedModel()
  with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
  return {f.signature.name: collections.Counter(n.op for n in f.node_def)
          for f in saved.meta_graphs[0].graph_def.library.function
          if base.LOOP_NAME + "_body" in f.signature.name
          or (f.signature.name.startswith("while_body")
              and len(f.node_def) > 50)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("model_dir")
  args = parser.parse_args(argv)
  for name, ops in sorted(loop_bodies(args.model_dir).items()):
    costly = sum(n for op, n in ops.items() if op not in _FREE)
    print(f"{name}: {sum(ops.values())} nodes, {costly} besides "
          f"{' / '.join(_FREE)}")
    print("  " + ", ".join(f"{op} {n}" for op, n in ops.most_common(40)))


if __name__ == "__main__":
  main()
