# TensorFlow on the local Debian base, for the trainer's TF_IMAGE where tensorflow/tensorflow
# cannot be pulled (an offline machine, the stack test): the same shape as that image (TensorFlow in
# the system Python 3.11, apt available), built from the pinned lock.
# Build from the repository root:
#   docker build -f docker/local/tensorflow-cpu.Dockerfile --build-arg BASE_IMAGE=postergenre-base:bookworm \
#       -t postergenre-tensorflow:2.21.0 .
ARG BASE_IMAGE=postergenre-base:bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip \
    && rm -rf /var/lib/apt/lists/*
COPY docker/requirements.lock /tmp/requirements.lock
# The system Python holds TensorFlow, as in TensorFlow's images; Debian marks it externally managed.
RUN grep -E '^(tensorflow|keras|numpy|protobuf|h5py|ml_dtypes)==' /tmp/requirements.lock > /tmp/tf.txt \
    && pip install --no-cache-dir --break-system-packages --constraint /tmp/requirements.lock --requirement /tmp/tf.txt \
    && rm /tmp/tf.txt /tmp/requirements.lock
