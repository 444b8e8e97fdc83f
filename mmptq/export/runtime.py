"""Running an exported graph in ONNX Runtime: sessions, latency, and an
OpenMMLab model whose graph part runs in a session (so that the config's
evaluator scores the runtime's outputs)."""
import contextlib
import statistics
import time
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .graphs import ExportGraph
from .ort_graph import ort_rewrites


def ort_session(path: str,
                optimize: bool = True,
                optimized_path: Optional[str] = None,
                threads: int = 0) -> ort.InferenceSession:
    """A CPU session of ``path``: all graph optimizations (QDQ groups fused
    into int8 kernels) or none (each Q / DQ runs as written);
    ``optimized_path`` saves the optimized graph (which nodes fused)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.intra_op_num_threads = threads
    # no busy-waiting after a run: it would take the cores from whatever
    # runs next (torch, another session) on a small shared machine
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, opts,
                                providers=['CPUExecutionProvider'])


def ort_ready(path: str) -> str:
    """The graph ONNX Runtime runs best, as ``<path>.ort.onnx``
    (``ort_graph.ort_rewrites``: a QDQ pair before a MaxPool, 1×1
    convolutions with a float output as int8 ``MatMulIntegerToFloat``,
    float initializers for the weights of the other float convolutions);
    ``path`` itself when no pass applies."""
    model = onnx.load(path)
    if not any(ort_rewrites(model).values()):
        return path
    out = path[:-len('.onnx')] + '.ort.onnx'
    onnx.save(model, out)
    return out


def latency_per_image(calls: Dict[str, Callable[[], object]],
                      batch_size: int,
                      repeats: int = 10,
                      warmup: int = 2,
                      clock: Callable[[], float] = time.perf_counter
                      ) -> Dict[str, float]:
    """Per call: the median of its ``repeats`` timed durations divided by
    ``batch_size``, in ms, after ``warmup`` untimed rounds. Each round
    calls every one in turn, so that a load change on a shared machine
    slows them alike (their ratios hold). ``clock``: wall time, or
    ``time.thread_time`` (the CPU time of the calling thread: robust to
    the load of other processes; valid for single-threaded calls: ONNX
    Runtime with one intra-op thread and torch with one thread run on the
    caller)."""
    for _ in range(warmup):
        for run in calls.values():
            run()
    times: Dict[str, List[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, run in calls.items():
            start = clock()
            run()
            times[key].append(clock() - start)
    return {key: 1000 * statistics.median(t) / batch_size
            for key, t in times.items()}


def session_call(session: ort.InferenceSession, x: torch.Tensor
                 ) -> Callable[[], object]:
    """``run()`` of ``session`` on ``x`` (its one input)."""
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


@contextlib.contextmanager
def runtime_forward(graph: ExportGraph,
                    session: ort.InferenceSession) -> Iterator[None]:
    """Within the context, ``graph.model``'s ``extract_feat`` passes its
    input through and its head's forward runs ``session`` on it: the
    model's predict (box decoding, NMS, resize) then works on the
    runtime's raw outputs."""
    if graph.head is None:
        raise ValueError('only OpenMMLab classifiers, detectors and '
                         'segmentors run through a session')
    model, head = graph.model, graph.head
    name = session.get_inputs()[0].name
    if graph.kind == 'detector':  # levels per head output: out<i>_level<j>
        heads = [o.name.split('_')[0] for o in session.get_outputs()]
        graph.levels = [heads.count(h) for h in dict.fromkeys(heads)]

    def forward(x, *args, **kwargs):
        outs = session.run(None, {name: np.ascontiguousarray(x.numpy())})
        return graph.unflatten([torch.from_numpy(o) for o in outs])

    model.extract_feat = lambda x, *args, **kwargs: x
    head.forward = forward
    try:
        yield
    finally:
        del model.extract_feat
        del head.forward
