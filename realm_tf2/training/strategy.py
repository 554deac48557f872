"""Distribution strategies from the runtime config (tpu / mirrored / one_device / off)."""
import realm_tf2  # noqa: F401
from absl import logging
import tensorflow as tf

from official.common import distribute_utils


def ensure_virtual_cpus(n: int) -> bool:
  """Splits the first physical CPU into `n` logical devices (our stand-in for accelerators).

  Must run before TensorFlow initialises its runtime; returns False (and logs) if it is too late.
  """
  if n <= 1:
    return True
  cpus = tf.config.list_physical_devices("CPU")
  current = tf.config.get_logical_device_configuration(cpus[0])
  if current and len(current) >= n:
    return True
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    return True
  except RuntimeError as e:
    logging.warning("Could not create %d virtual CPUs (runtime already initialised): %s", n, e)
    return False


def get_strategy(distribution_strategy: str = "off", tpu: str = "", num_virtual_cpus: int = 0,
                 num_gpus: int = 0) -> tf.distribute.Strategy:
  """Returns the strategy named by `distribution_strategy`.

  Args:
    distribution_strategy: "tpu", "mirrored", "one_device", "multi_worker_mirrored" or "off".
    tpu: TPU name or grpc address for "tpu" ("local" on a TPU VM).
    num_virtual_cpus: with "mirrored" and no GPU, mirror over this many virtual CPU devices (a CPU
      proxy for multi-replica training; 0 or 1 means the single CPU).
    num_gpus: GPUs for "mirrored".
  """
  name = (distribution_strategy or "off").lower()
  if name == "mirrored" and num_gpus == 0 and num_virtual_cpus > 1:
    if ensure_virtual_cpus(num_virtual_cpus):
      devices = [f"/cpu:{i}" for i in range(num_virtual_cpus)]
      return tf.distribute.MirroredStrategy(devices)
  return distribute_utils.get_distribution_strategy(
      distribution_strategy=name, num_gpus=num_gpus, tpu_address=tpu or None)
