"""realm-tf2: REALM pre-training and ORQA open-domain QA for TensorFlow 2 / Keras."""
import setuptools

RUNTIME = [
    # Pinned in lockstep: the ScaNN and TF Text custom ops are ABI-tied to the TF minor version.
    "tensorflow~=2.20.0",
    "tensorflow-text~=2.20.0",
    "tf-keras~=2.20.0",
    "tf-models-official==2.20.0",
    "tensorflow-hub>=0.16.1",
    "scann[tf]==1.4.2",
    "absl-py",
    "numpy",
    "pyyaml",
]
TEST = ["pytest", "nbclient", "nbformat", "ipykernel", "matplotlib"]

setuptools.setup(
    name="realm-tf2",
    version="0.1.0",
    description="REALM pre-training and ORQA fine-tuning for TensorFlow 2 / Keras and Cloud TPUs",
    packages=setuptools.find_packages(include=["realm_tf2", "realm_tf2.*", "data_prep", "data_prep.*"]),
    package_data={"realm_tf2.accel": ["*.cc"]},  # C++ CPU kernels, compiled on first use
    py_modules=["run_pretrain", "run_finetune", "run_demo"],
    python_requires=">=3.10,<3.13",
    install_requires=RUNTIME,
    extras_require={"test": TEST, "notebook": ["matplotlib", "ipykernel"],
                    # data_prep --beam. Beam pins protobuf < 7 (TF 2.20 works with it); CI installs
                    # it in its own venv (scripts/run_beam_tests.sh).
                    "beam": ["apache-beam~=2.77"]},
    license="Apache-2.0",
)
