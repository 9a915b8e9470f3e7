"""What one run of the pipeline did, read back from ML Metadata.

With caching, the artifacts a run uses are not the newest folders under the
pipeline root: a reused component's output is an earlier execution's. ML
Metadata knows, per run (a `pipeline_run` context, LocalDagRunner's run id),
which node executions ran, which were reused from the cache and which
artifacts each one produced; `latest_run` reads that for the command line
and the benchmarks.
"""

import dataclasses
import os
from typing import Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

PIPELINE_CONTEXT = "pipeline"
RUN_CONTEXT = "pipeline_run"
NODE_CONTEXT = "node"

_STATES = {
    metadata_store_pb2.Execution.COMPLETE: "ran",
    metadata_store_pb2.Execution.CACHED: "cached",
    metadata_store_pb2.Execution.FAILED: "failed",
    metadata_store_pb2.Execution.RUNNING: "running",
    metadata_store_pb2.Execution.CANCELED: "canceled",
    metadata_store_pb2.Execution.NEW: "new",
}


@dataclasses.dataclass
class NodeRun:
  node_id: str
  state: str                     # ran | cached | failed | running | ...
  execution_id: int
  seconds: float                 # 0 for a cached one
  outputs: Dict[str, List[str]]  # output key -> artifact URIs

  def output(self, key: str) -> Optional[str]:
    uris = self.outputs.get(key) or []
    return uris[0] if uris else None


@dataclasses.dataclass
class RunRecord:
  run_id: str
  nodes: Dict[str, NodeRun]      # node id -> its execution in this run

  def state(self, node_id: str) -> Optional[str]:
    node = self.nodes.get(node_id)
    return node.state if node else None

  def output(self, node_id: str, key: str) -> Optional[str]:
    node = self.nodes.get(node_id)
    return node.output(key) if node else None

  def ran(self) -> List[str]:
    return sorted(n for n, r in self.nodes.items() if r.state == "ran")

  def cached(self) -> List[str]:
    return sorted(n for n, r in self.nodes.items() if r.state == "cached")


def _store(metadata_path: str) -> metadata_store.MetadataStore:
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  config.sqlite.connection_mode = (
      metadata_store_pb2.SqliteMetadataSourceConfig.READONLY)
  return metadata_store.MetadataStore(config)


def latest_run(metadata_path: str, pipeline_name: str) -> Optional[RunRecord]:
  """The newest run of `pipeline_name` in the SQLite ML Metadata at
  `metadata_path` (None: no such run). Resolver nodes are left out: they
  produce no artifact of their own."""
  store = _store(metadata_path)
  pipeline = store.get_context_by_type_and_name(PIPELINE_CONTEXT,
                                                pipeline_name)
  if pipeline is None:
    return None
  in_pipeline = {e.id for e in store.get_executions_by_context(pipeline.id)}
  runs = sorted(store.get_contexts_by_type(RUN_CONTEXT),
                key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)
  for run in runs:
    executions = [e for e in store.get_executions_by_context(run.id)
                  if e.id in in_pipeline]
    if executions:
      return RunRecord(run.name, _nodes(store, pipeline_name, executions))
  return None


def latest_run_id(metadata_path: str, pipeline_name: str) -> Optional[str]:
  """The id of the pipeline's newest recorded run, or None (also when there
  is no ML Metadata at `metadata_path` yet)."""
  if not os.path.exists(metadata_path):
    return None
  record = latest_run(metadata_path, pipeline_name)
  return record.run_id if record else None


def _nodes(store, pipeline_name: str, executions) -> Dict[str, NodeRun]:
  node_type = store.get_context_type(NODE_CONTEXT)
  prefix = f"{pipeline_name}."
  nodes: Dict[str, NodeRun] = {}
  events = store.get_events_by_execution_ids([e.id for e in executions])
  artifact_ids = [ev.artifact_id for ev in events
                  if ev.type == metadata_store_pb2.Event.OUTPUT]
  uris = {a.id: a.uri for a in store.get_artifacts_by_id(artifact_ids)}
  for execution in sorted(executions, key=lambda e: e.id):
    node_id = None
    for context in store.get_contexts_by_execution(execution.id):
      if context.type_id == node_type.id and context.name.startswith(prefix):
        node_id = context.name[len(prefix):]
    if node_id is None or "resolver" in node_id:
      continue
    outputs: Dict[str, List[str]] = {}
    for ev in events:
      if (ev.execution_id == execution.id
          and ev.type == metadata_store_pb2.Event.OUTPUT
          and ev.artifact_id in uris):
        outputs.setdefault(ev.path.steps[0].key, []).append(
            uris[ev.artifact_id])
    state = _STATES.get(execution.last_known_state, "unknown")
    seconds = 0.0
    if state == "ran":
      seconds = (execution.last_update_time_since_epoch
                 - execution.create_time_since_epoch) / 1000
    nodes[node_id] = NodeRun(node_id, state, execution.id, seconds, outputs)
  return nodes


def summary_lines(record: RunRecord, prefix: str = "[run]") -> List[str]:
  """One line per component: `[run] Trainer: ran (42 s)` or
  `[run] Transform: reused from cache`."""
  lines = []
  for node_id, node in record.nodes.items():
    if node.state == "cached":
      what = "reused from cache"
    elif node.state == "ran":
      what = f"ran ({node.seconds:.0f} s)"
    else:
      what = node.state
    lines.append(f"{prefix} {node_id}: {what}")
  return lines
