"""The tiny FluxPipeline the tests run (it lives in the package: `planner models tiny-pipeline`
saves it for a newcomer's dry run)."""

from runtime.tiny_pipeline import (  # noqa: F401 (re-exported for the tests)
    WORDS,
    _word_level,
    build_tiny_pipeline,
    save_tiny_pipeline,
    tiny_tokenizers,
    tiny_vae,
)
