# Gadgetron with the MRF gadgets: `docker build -t mrf-gadgetron .` then
#   docker run --rm -p 9002:9002 mrf-gadgetron
#   gadgetron_ismrmrd_client -p 9002 -f scan.h5 -c mrf_default.xml -o maps.h5
# The base is Gadgetron's CPU runtime image, published by Gadgetron's CI since Aug 2024 (older documentation
# names ghcr.io/gadgetron/gadgetron/gadgetron_ubuntu_rt_nocuda, an older build; pass it as GADGETRON_IMAGE to
# use it): Gadgetron 4 in the conda env "gadgetron" (/opt/conda/envs/gadgetron: Python 3.10, numpy 1.26.4,
# h5py 3.7, scipy 1.13, ismrmrd 1.14, gadgetron-python 1.4.1); its entrypoint activates that env, so its python is
# the first on PATH and the one Gadgetron starts for <external> Python nodes; it runs as uid 1000.
# docker/emulate.sh (`make image-env`) does the same install and check without Docker.
ARG GADGETRON_IMAGE=ghcr.io/gadgetron/gadgetron/ubuntu22.04_rt_nocuda:latest
FROM ${GADGETRON_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG GT_ENV=/opt/conda/envs/gadgetron
USER root

# torch 2.13.0 (CPU build) first, then the package as a wheel, into the env; every distribution the env has
# (numpy, h5py, scipy, setuptools, ismrmrd, gadgetron, ...) is a pip constraint at its version, so pip only adds
# packages, and install.sh fails if any of them changed (docker/install.sh says how torch fits in)
COPY pyproject.toml README.md /tmp/mrf-gadgetron/
COPY mrf_core /tmp/mrf-gadgetron/mrf_core
COPY gadgets /tmp/mrf-gadgetron/gadgets
COPY mrf_gadgetron /tmp/mrf-gadgetron/mrf_gadgetron
COPY config_xml /tmp/mrf-gadgetron/config_xml
COPY docker/install.sh docker/verify.sh /opt/mrf-gadgetron/
RUN sh /opt/mrf-gadgetron/install.sh ${GT_ENV}/bin/python /tmp/mrf-gadgetron ${TORCH_INDEX} \
 && rm -rf /tmp/mrf-gadgetron

# the stream configurations, by name for clients (-c mrf_default.xml, mrf_dictionary.xml, ...)
COPY config_xml/*.xml ${GT_ENV}/share/gadgetron/config/

# The check: as the image's user, from a fresh folder outside the package, with the env's python, a tiny scan
# (32^2, 40 TRs) replayed through every shipped configuration, each by name as in Gadgetron's config folder;
# `docker build` fails when any chain fails. About a minute; it leaves nothing behind.
USER 1000
RUN sh /opt/mrf-gadgetron/verify.sh ${GT_ENV}/bin/python ${GT_ENV}/share/gadgetron/config

# numpy's transparent-huge-page requests made the first slice of each fresh reconstruct process ~1 s slower
# (README, Inline latency); Gadgetron starts the Python stages with this environment
ENV NUMPY_MADVISE_HUGEPAGE=0

EXPOSE 9002
