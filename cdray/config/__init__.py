"""The typed, frozen configuration tree of a sweep: one dataclass per section, validated where
each field is defined, loaded strictly from YAML with presets, profiles and dotted overrides."""
from cdray.config.data import PACKAGED_TEXT_NAMES, CorpusConfig, SourceConfig, TokenizerConfig
from cdray.config.errors import ConfigError
from cdray.config.generation import (
                                     NEEDS_AMATEUR,
                                     PAPER_COMPAT,
                                     PAPER_COMPAT_PENALTY,
                                     STRATEGIES,
                                     DecodingConfig,
                                     GenerationConfig,
)
from cdray.config.loading import (
                                     apply_profile,
                                     from_dict,
                                     load,
                                     load_raw,
                                     parse_override,
                                     parse_section,
)
from cdray.config.plain import set_dotted, to_dict
from cdray.config.models import MODEL_PRESETS, STUDENT, ExpertConfig, ModelConfig, SmallConfig, TrainConfig
from cdray.config.reference import field_reference, reference_markdown
from cdray.config.sweep import (
                                     BABYLM_TASKS,
                                     EvalConfig,
                                     GridConfig,
                                     ProfileConfig,
                                     ProfileEvalConfig,
                                     ProfileGenerationConfig,
                                     ProfileTrainConfig,
                                     RayConfig,
                                     StoreConfig,
                                     SweepConfig,
                                     TrackingConfig,
)

__all__ = [
    "PACKAGED_TEXT_NAMES", "CorpusConfig", "SourceConfig", "TokenizerConfig", "ConfigError", "PAPER_COMPAT",
    "NEEDS_AMATEUR", "PAPER_COMPAT_PENALTY", "STRATEGIES", "DecodingConfig", "GenerationConfig", "apply_profile", "from_dict",
    "load", "load_raw", "parse_override", "parse_section", "set_dotted", "to_dict", "MODEL_PRESETS",
    "STUDENT", "ExpertConfig", "ModelConfig", "SmallConfig", "TrainConfig", "field_reference", "reference_markdown",
    "BABYLM_TASKS", "EvalConfig", "GridConfig", "ProfileConfig", "ProfileEvalConfig", "ProfileGenerationConfig", "ProfileTrainConfig",
    "RayConfig", "StoreConfig", "SweepConfig", "TrackingConfig",
]
