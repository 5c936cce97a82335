"""Which NNI is installed (:mod:`proxyless_rs._nni_version`, the probe every module below the adapters
reads), under the path scripts and tests import it from."""

from .._nni_version import NNI3, NNI_MAJOR, NNI_NAME

__all__ = ['NNI3', 'NNI_MAJOR', 'NNI_NAME']
