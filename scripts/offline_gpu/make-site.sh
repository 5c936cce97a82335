#!/usr/bin/env bash
# Makes .gpu/site/ and .gpu/numpy1/ of the offline GPU bundle (here, with network; not on the GPU machine).
#   bash scripts/offline_gpu/make-site.sh [DL]   # DL: folder for the downloaded wheels (default /work/gpu-build/dl)
# Pure-Python packages (and four small binary ones for cp312) that NNI 2.10.1, Lightning 1.9.5 and
# the tests import, in the versions of the dev venv (.venv), unzipped into .gpu/site/, which run.sh
# puts first on PYTHONPATH. numpy 1.26.4 (cp312) stays a wheel in .gpu/numpy1/ (37 MiB of OpenBLAS
# unzipped): run.sh uses it only where the machine's scipy/sklearn/pandas/onnx import under it.
set -euo pipefail
cd "$(dirname "$0")/../.." && mkdir -p .gpu && cd .gpu
DL=${1:-/work/gpu-build/dl}
PIP="python3.11 -m pip download -q --no-deps -d $DL"
mkdir -p "$DL"
PURE="nni==2.10.1 pytorch-lightning==1.9.5 torchmetrics==0.10.3 lightning-utilities==0.15.3 typeguard==2.13.3
      json-tricks==3.17.3 schema==0.7.8 colorama==0.4.6 astor==0.8.1 prettytable==3.19.0 cloudpickle==3.1.3
      PythonWebHDFS==0.2.3 responses==0.26.3 requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1"
$PIP $PURE
$PIP --only-binary=:all: --platform any --python-version 3.12 charset-normalizer==3.5.3
$PIP --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux_2_12_x86_64 \
    numpy==1.26.4 websockets==17.4 psutil==7.2.2 wcwidth==0.9.4
rm -rf site numpy1 && mkdir -p site numpy1
for name in nni-2.10.1 pytorch_lightning-1.9.5 torchmetrics-0.10.3 lightning_utilities-0.15.3 typeguard-2.13.3 \
            json_tricks-3.17.3 schema-0.7.8 colorama-0.4.6 astor-0.8.1 prettytable-3.19.0 wcwidth-0.9.4 \
            cloudpickle-3.1.3 PythonWebHDFS-0.2.3 responses-0.26.3 requests-2.34.2 urllib3-2.8.0 idna-3.20 \
            certifi-2026.10.19.post1 charset_normalizer-3.5.3 websockets-17.4 psutil-7.2.2; do
    wheel=$(ls "$DL"/"$name"-*.whl | head -1)
    python3 -m zipfile -e "$wheel" site/
done
cp "$DL"/numpy-1.26.4-cp312-*.whl numpy1/
# NNI's web UI (171 MiB) and bytecode caches: not needed.
rm -rf site/nni_node site/*.data
find site -name __pycache__ -type d -prune -exec rm -rf {} +
# numpy 2 removed np.Inf and np.float_ (Lightning 1.9.5 and torchmetrics 0.10.3 use them; np.inf and
# np.float64 are the same objects under numpy 1), so the bundle also runs on the machine's numpy 2.
sed -i 's/np\.Inf\b/np.inf/g' site/pytorch_lightning/callbacks/early_stopping.py site/pytorch_lightning/callbacks/model_checkpoint.py
sed -i 's/np\.float_\b/np.float64/g' site/torchmetrics/image/fid.py
du -sh site numpy1
