"""Test stand-in, on ``PYTHONPATH`` of a served app: huggingface_hub reads a download in 32 KiB chunks
instead of 10 MiB ones, so that the tiny checkpoint's download (0.6 MB) reports its progress several
times, as the real checkpoint's 6.66 GB does in 10 MiB steps."""

import huggingface_hub.constants

huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE = 32 * 1024
