from kernels import warm_up
from kernels.mlp import _phi_many
from kernels.posterior import _update_many, _update_one
from kernels.scoring import _decide_many, _thompson_one, _ucb_one


def test_warm_up_compiles_every_kernel_for_both_float_dtypes():
    seconds = warm_up()
    assert seconds >= 0.0
    for dispatcher, arg in [
        (_phi_many, 0),
        (_update_one, 2),
        (_update_many, 3),
        (_thompson_one, 0),
        (_ucb_one, 0),
        (_decide_many, 0),
    ]:
        dtypes = {str(sig[arg].dtype) for sig in dispatcher.signatures}
        assert {"float32", "float64"} <= dtypes, (dispatcher, dtypes)


def test_kernels_never_import_torch_or_streaming_packages():
    import subprocess
    import sys

    code = (
        "import sys, kernels, kernels.reference, kernels.warmup; "
        "bad = [m for m in ('torch', 'faust', 'kafka', 'confluent_kafka', 'policy', 'streams') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
