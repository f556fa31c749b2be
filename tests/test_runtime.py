"""Where the pipeline runs: Kaggle recognised by the kernel, GPUs torch cannot run left out."""
import pytest

from czii_kaggle import runtime
from czii_kaggle.errors import CziiInputError
from czii_kaggle.runtime import DevicePlan, Gpu, gpu_supported, plan_devices

#: torch 2.10 + CUDA 12.8 wheels (Kaggle's image): no sm_60 (P100) any more.
TORCH_210_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
P100 = (6, 0)
T4 = (7, 5)


def test_kaggle_is_the_kernel_not_the_data(tmp_path):
    absent = tmp_path / "no-working"
    assert not runtime.on_kaggle({}, absent)
    assert runtime.on_kaggle({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, absent)
    assert not runtime.on_kaggle({"KAGGLE_KERNEL_RUN_TYPE": ""}, absent)
    (tmp_path / "working").mkdir()
    assert runtime.on_kaggle({}, tmp_path / "working")


def test_data_root_on_kaggle_without_the_competition_data_stops(tmp_path):
    competition = tmp_path / "czii-cryo-et-object-identification"
    # off Kaggle nothing is assumed: the caller may simulate
    assert runtime.resolve_data_root(None, kaggle=False, competition_root=competition) is None
    # a root given is used as given, on Kaggle or not
    assert runtime.resolve_data_root(tmp_path / "mine", kaggle=True, competition_root=competition) == tmp_path / "mine"
    # on Kaggle without the data: one line naming it and what to do; never a simulated set
    with pytest.raises(CziiInputError) as err:
        runtime.resolve_data_root(None, kaggle=True, competition_root=competition)
    msg = str(err.value)
    assert str(competition) in msg and "not attached" in msg and "Add Input" in msg and "\n" not in msg
    competition.mkdir()
    assert runtime.resolve_data_root(None, kaggle=True, competition_root=competition) == competition


@pytest.mark.parametrize("capability, archs, expected", [
    (P100, TORCH_210_ARCHS, False),          # Kaggle's P100 with torch 2.10
    (T4, TORCH_210_ARCHS, True),
    ((8, 9), TORCH_210_ARCHS, True),         # L4: the sm_86 binary runs on 8.9
    ((9, 0), TORCH_210_ARCHS, True),
    (P100, ["sm_50", "sm_60", "sm_70"], True),  # an older torch that still had sm_60
    ((5, 0), ["sm_52", "sm_60"], False),     # a binary never runs on a lower minor
    ((10, 3), ["sm_90", "compute_90"], True),  # PTX is compiled for newer GPUs
    ((8, 0), ["sm_90", "compute_90"], False),
    (T4, [], False),                         # a CPU-only torch
])
def test_gpu_supported(capability, archs, expected):
    assert gpu_supported(capability, archs) is expected


def test_plan_leaves_out_a_gpu_torch_cannot_run():
    p100 = Gpu(0, "Tesla P100-PCIE-16GB", P100)
    t4s = [Gpu(0, "Tesla T4", T4), Gpu(1, "Tesla T4", T4)]
    assert plan_devices(t4s, TORCH_210_ARCHS) == DevicePlan(["cuda:0", "cuda:1"], [])
    plan = plan_devices([p100], TORCH_210_ARCHS)
    assert plan.devices == ["cpu"] and plan.on_cpu
    (line,) = plan.left_out
    assert "GPU 0 (Tesla P100-PCIE-16GB, sm_60) cannot run with this torch" in line and "T4" in line
    # a mixed machine keeps the GPU it can use
    mixed = plan_devices([p100, Gpu(1, "Tesla T4", T4)], TORCH_210_ARCHS)
    assert mixed.devices == ["cuda:1"] and len(mixed.left_out) == 1
    assert plan_devices([], TORCH_210_ARCHS) == DevicePlan(["cpu"], [])


def test_cpu_fallback_prints_an_estimate():
    plan = plan_devices([Gpu(0, "Tesla P100-PCIE-16GB", P100)], TORCH_210_ARCHS)
    lines = runtime.describe_plan(plan, n_runs=500, n_cpus=4)
    assert lines[0] == plan.left_out[0]
    minutes = 500 * runtime.CPU_SECONDS_PER_RUN * runtime.CPU_REFERENCE_CORES / 4 / 60
    assert lines[1].startswith("no usable GPU: predicting 500 run(s) on the CPU") and f"{minutes:.0f} min" in lines[1]
    assert runtime.cpu_estimate_s(2, 2, shape_vox=(92, 630, 630)) == pytest.approx(runtime.CPU_SECONDS_PER_RUN)
    assert runtime.describe_plan(plan_devices([Gpu(0, "Tesla T4", T4)], TORCH_210_ARCHS), 500) == []


def test_data_root_or_simulate(tmp_path, real_root):
    competition = tmp_path / "czii-cryo-et-object-identification"
    given = runtime.data_root_or_simulate(tmp_path / "mine", tmp_path / "sim", n_train=1, competition_root=competition)
    assert given == (tmp_path / "mine", None) and not (tmp_path / "sim").exists()
    with pytest.raises(CziiInputError, match="not attached"):  # a Kaggle kernel never submits a simulated set
        runtime.data_root_or_simulate(None, tmp_path / "sim", n_test=1, kaggle_needs_data=True, kaggle=True,
                                      competition_root=competition)
    assert not (tmp_path / "sim").exists()
    from czii_kaggle import layout
    from czii_kaggle.simulate import SimConfig

    root, sim = runtime.data_root_or_simulate(None, tmp_path / "sim", n_train=1, n_test=1, seed=3,
                                              config=SimConfig(shape_vox=(16, 96, 96)), real_layouts=real_root,
                                              kaggle_needs_data=True, kaggle=False, competition_root=competition)
    assert root == sim.root and sim.train_runs == ["TS_5_4"] and len(sim.test_runs) == 1  # a real run's layout
    assert layout.list_runs(root, "test") == sim.test_runs
    again, _ = runtime.data_root_or_simulate(None, tmp_path / "sim", n_train=1, seed=4,
                                             config=SimConfig(shape_vox=(16, 96, 96)), competition_root=competition)
    assert again == root and "TS_sim_4_0" in layout.list_pick_runs(root)  # its own scratch folder: written again
    competition.mkdir()
    assert runtime.data_root_or_simulate(None, tmp_path / "other", n_test=1, competition_root=competition) == (
        competition, None)
