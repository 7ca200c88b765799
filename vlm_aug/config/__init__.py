"""Configuration: YAML files validated into typed sections (`sections`), model presets that
fill what a config leaves out (`presets`), and the error that names a bad field (`errors`)."""

from vlm_aug.config.errors import ConfigError
from vlm_aug.config.sections import (CLIPConfig, Config, GenerationConfig, InputConfig, LimitsConfig, OutputConfig,
                                     PolicyConfig, RayConfig, RepairConfig, ReportConfig, VLMConfig,
                                     load_config, settings_for_engine, with_defaults)

__all__ = ["CLIPConfig", "Config", "ConfigError", "GenerationConfig", "InputConfig", "LimitsConfig",
           "OutputConfig", "PolicyConfig", "RayConfig", "RepairConfig", "ReportConfig", "VLMConfig", "load_config",
           "settings_for_engine", "with_defaults"]
