r"""The machine's dense fp32 (and bf16) matmul rate in GFLOP/s, plain TF and XLA: the denominator.

  python benchmarks/matmul_peak.py [--sizes=512,1024,2048] [--repeats=5] [--bfloat16]

One JSON line per (size, dtype, compiler) and a final `{"peak_gflops": ...}` (max fp32 rate; with
--bfloat16 also `peak_gflops_bfloat16`, the rate bf16 runs are held against).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import realm_tf2  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

from benchmarks import common  # noqa: E402


def run(sizes=(512, 1024, 2048), repeats=5, bfloat16=False, intra_op=0):
  common.set_threads(intra_op)
  results = []
  best = {}
  dtypes = [tf.float32] + ([tf.bfloat16] if bfloat16 else [])
  for dtype in dtypes:
    for n in sizes:
      for xla in (False, True):
        r = common.matmul_gflops(n, dtype, xla, repeats=repeats)
        rec = {"benchmark": "matmul", "n": n, "dtype": dtype.name, "xla": xla, **r}
        results.append(common.emit(rec))
        best[dtype.name] = max(best.get(dtype.name, 0.0), r["gflops_best"])
  extra = {"peak_gflops_bfloat16": best["bfloat16"]} if "bfloat16" in best else {}
  results.append(common.emit({"benchmark": "matmul_peak", "peak_gflops": best["float32"], **extra,
                              "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                              "cpus": os.cpu_count()}))
  return results


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--sizes", default="512,1024,2048")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--bfloat16", action="store_true")
  ap.add_argument("--intra_op", type=int, default=0)
  a = ap.parse_args(argv)
  return run(tuple(int(s) for s in a.sizes.split(",")), a.repeats, a.bfloat16, a.intra_op)


if __name__ == "__main__":
  main()
