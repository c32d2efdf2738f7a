# Gadgetron with the MRF gadgets: `docker build -t mrf-gadgetron .` then
#   docker run --rm -p 9002:9002 mrf-gadgetron
#   gadgetron_ismrmrd_client -p 9002 -f scan.h5 -c mrf_default.xml -o maps.h5
# The base is Gadgetron's published CPU runtime image: Gadgetron 4 in the conda env "gadgetron"
# (/opt/conda/envs/gadgetron, Python 3.10, numpy 1.26); its entrypoint activates that env, so its python
# is the first on PATH and the one Gadgetron starts for <external> Python nodes.
ARG GADGETRON_IMAGE=ghcr.io/gadgetron/gadgetron/gadgetron_ubuntu_rt_nocuda:latest
FROM ${GADGETRON_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG GT_ENV=/opt/conda/envs/gadgetron
USER root

# torch first (CPU build, pinned), then the package; numpy stays the env's (its h5py/ismrmrd are built for it)
COPY pyproject.toml README.md /tmp/mrf-gadgetron/
COPY mrf_core /tmp/mrf-gadgetron/mrf_core
COPY gadgets /tmp/mrf-gadgetron/gadgets
COPY mrf_gadgetron /tmp/mrf-gadgetron/mrf_gadgetron
COPY config_xml /tmp/mrf-gadgetron/config_xml
RUN ${GT_ENV}/bin/python -m pip --version || ${GT_ENV}/bin/python -m ensurepip \
 && ${GT_ENV}/bin/python -c "import numpy; print('numpy==' + numpy.__version__)" > /tmp/constraints.txt \
 && ${GT_ENV}/bin/python -m pip install --no-cache-dir --index-url ${TORCH_INDEX} torch==2.13.0 \
 && ${GT_ENV}/bin/python -m pip install --no-cache-dir -c /tmp/constraints.txt /tmp/mrf-gadgetron \
 && rm -rf /tmp/mrf-gadgetron /tmp/constraints.txt \
 && ${GT_ENV}/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0') and torch.version.cuda is None, 'torch was replaced: ' + torch.__version__; import gadgets.reconstruct, gadgets.map_network, gadgets.map_dictionary, gadgets.emit; from mrf_core.mapping import default_model_path; assert default_model_path().is_file(), 'default model missing'"

# the stream configurations, by name for clients (-c mrf_default.xml, mrf_dictionary.xml, ...)
COPY config_xml/*.xml ${GT_ENV}/share/gadgetron/config/

USER 1000
EXPOSE 9002
