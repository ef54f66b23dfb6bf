"""One settings model for the whole tool.

Precedence (highest first): explicit keyword arguments, ``CX_*`` environment variables, a TOML file
(``$CX_CONFIG`` or ``./cx.toml``), then the defaults below, which work with no configuration at all.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _toml_path() -> Path:
    return Path(os.environ.get("CX_CONFIG", "cx.toml"))


class Settings(BaseSettings):
    """Settings of a connectomix run. Sizes in bytes, paths relative to the working directory."""

    model_config = SettingsConfigDict(env_prefix="CX_", extra="ignore")

    workspace: Path = Field(Path("cx-workspace"), description="Directory for everything a run writes.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: a SQLite file in the workspace."
    )
    data_dir: Path | None = Field(
        None, description="Directory of the real test data (default: ../shared/testdata when present)."
    )
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["fp32", "bf16"] = "bf16"
    cache_bytes: int = Field(1 << 30, ge=0, description="Byte budget of the in-memory chunk cache.")
    disk_cache_dir: Path | None = Field(None, description="Optional on-disk chunk cache directory.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_toml_path())
        return (init_settings, env_settings, toml)

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: the configured one, or a SQLite file inside the workspace."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.workspace / 'connectomix.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; call ``get_settings.cache_clear()`` after changing env)."""
    return Settings()
