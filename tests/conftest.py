"""Session set-up shared by all tests.

mmpretrain 1.2 imports torchvision at module level; where no torchvision
matching the installed torch is installed, let ``import torchvision`` fall
back to mmptq's stand-in (a no-op where a real torchvision exists).

The ``slow`` marker: demo evaluations, end-to-end tool runs in
subprocesses, multi-process and full-size model tests. ``make test-fast``
(``pytest -m "not slow"``) runs the rest. Tests are marked here, by file
or by test-name prefix, so that one table says what the fast run leaves
out; a test file may also mark a test with ``@pytest.mark.slow`` itself.
"""
from typing import List

import pytest

from mmptq.utils import install_torchvision_shim

install_torchvision_shim()

#: ``path`` (every test of the file) or ``path::prefix`` (the tests whose
#: name, parameters included, starts with ``prefix``); paths from tests/
SLOW = (
    # end to end: the tools in subprocesses on tiny data, demo models
    'test_tools/test_tools.py::test_det_',
    'test_tools/test_tools.py::test_seg_',
    'test_tools/test_tools.py::test_cls_',
    'test_tools/test_tools.py::test_config_with_own_quant_cfg',
    'test_tools/test_tools.py::test_quantized_checkpoint',
    'test_tools/test_tools.py::test_bad_cli_values',
    'test_tools/test_tools.py::test_unknown_registry_type',
    'test_tools/test_tools.py::test_quantize_needs_a_quant_cfg',
    'test_tools/test_tools.py::test_checkpoint_',
    'test_tools/test_bad_inputs.py',
    'test_tools/test_export_tool.py',
    'test_apis/test_demo_models.py',
    'test_apis/test_benchmark.py::test_matrix_rows',
    'test_apis/test_benchmark.py::test_coco_',
    'test_apis/test_benchmark.py::test_report_files',
    'test_apis/test_benchmark.py::test_progress_over_the_matrix',
    'test_apis/test_benchmark.py::test_missing_inputs_are_named',
    'test_apis/test_benchmark.py::test_train_and_publish',
    'test_apis/test_mixed_precision.py::test_tool_sensitivity_and_allocation',
    'test_packaging.py',
    # several processes (gloo on the loopback interface, torchrun)
    'test_engine/test_distributed.py::test_sync_identical_on_ranks',
    'test_engine/test_distributed.py::test_sync_equals_single_process',
    'test_engine/test_distributed.py::test_sync_ema_weighted_mean',
    'test_engine/test_distributed.py::test_sync_rank_without_data',
    'test_engine/test_distributed.py::test_sync_mismatch_raises_everywhere',
    'test_engine/test_distributed.py::test_calibrate_',
    'test_engine/test_distributed.py::test_reconstruction_identical',
    'test_engine/test_distributed.py::test_torchrun_',
    'test_quantizers/test_fqvit.py::test_ptf_factors_agree_across_ranks',
    # block reconstruction, EMA and export on the demo models
    'test_reconstruction/test_block_reconstruction.py::test_reconstruction_',
    'test_reconstruction/test_block_reconstruction.py::test_killed_run',
    'test_reconstruction/test_block_reconstruction.py::test_tools_run',
    'test_reconstruction/test_block_reconstruction.py::test_partition_of_mm',
    'test_reconstruction/test_state.py::test_a_truncated_unit_is_recomputed',
    'test_reconstruction/test_keep_better.py::test_a_',
    'test_reconstruction/test_keep_better.py::test_keep_better_off',
    'test_reconstruction/test_aphq.py::test_aphq_runs_on_the_toy_vit',
    'test_models/test_variants.py::test_outlier_keeps_the_function',
    'test_reconstruction/test_block_reconstruction.py::test_spilled_cache',
    'test_transforms/test_big.py::test_fold_keeps_fp_output',
    'test_transforms/test_big.py::test_quantized_checkpoint_round_trip',
    'test_engine/test_ema_hook.py',
    'test_apis/test_export.py::test_demo_graph_matches_fake_quant',
    'test_apis/test_export.py::test_runtime_benchmark_demo',
    'test_apis/test_export.py::test_random_init_resnet_fuses',
    'test_core/test_first_op.py::test_first_op_of_the_demo_models',
    'test_datasets/test_mnist_data.py::test_cli',
    'test_datasets/test_mnist_ref.py::test_minilm_unpack_and_offline_load',
    'test_datasets/test_mnist_ref.py::test_refseg_metric_on_ground_truth',
    'test_docs.py',
    # brute-force references, many configs
    'test_observers/test_mse_grid.py::test_random_rows_match_brute_force',
    'test_observers/test_mse_grid.py::test_outlier_rows_match_brute_force',
    'test_apis/test_mixed_precision.py::test_written_quant_cfg_round_trips',
    'test_core/test_sensitivity.py::test_ops_in_forward_order_with_macs',
    'test_quantizers/test_drq.py::test_quantize_model_and_restore',
    'test_apis/test_analyze.py::test_build_random_model_depends_only_on',
    # full-size or SAM models
    'test_core/test_own_forward_models.py',
    'test_apis/test_analyze.py::test_real_config_w8a8',
    'test_models/test_demo_sam.py',
    'test_models/test_box_prompt_sam.py::test_loss_trains_sam_not_detector',
    'test_models/test_itpn.py::test_full_size_configs_build',
    'test_models/test_ptq4sam_configs.py::test_configs_build_and_predict',
    'test_core/test_ptq4sam_presets.py::test_w4a4_quantizes_the_mask_decoder',
    'test_core/test_presets.py::test_fp_configs_build',
    'test_quantizers/test_fqvit.py::test_hivit_fully_covered',
    'test_core/test_quantize.py::test_w8a8_close_to_fp_and_w4a4_further',
    'test_export/test_onnx_qdq.py::test_log_int_softmax_is_named_where',
    'test_export/test_onnx_qdq.py::test_vit_w4a4_attention_matmuls',
    'test_observers/test_mse_grid.py::test_never_worse_than_mse_observer',
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        'markers', 'slow: demo evaluations, end-to-end tool runs, several '
        'processes, full-size models (make test-fast leaves them out)')


def _is_slow(nodeid: str) -> bool:
    path, _, name = nodeid.partition('::')
    path = path.split('tests/', 1)[-1]
    for entry in SLOW:
        slow_path, _, prefix = entry.partition('::')
        if path == slow_path and name.startswith(prefix):
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config,
                                  items: List[pytest.Item]) -> None:
    for item in items:
        if _is_slow(item.nodeid):
            item.add_marker(pytest.mark.slow)
