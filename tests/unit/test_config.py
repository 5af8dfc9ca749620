from __future__ import annotations

from pathlib import Path

import pytest

from node.config import Settings, load_settings
from node.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_documented_config_file_matches_the_code_defaults() -> None:
    assert load_settings(REPO / "config" / "node.toml") == Settings()


def test_every_key_is_documented_in_node_toml() -> None:
    text = (REPO / "config" / "node.toml").read_text()

    def keys(model: type, prefix: str = "") -> list[str]:
        found = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                found += keys(annotation, f"{name}.")
            else:
                found.append(prefix + name)
        return found

    for key in keys(Settings):
        table, name = key.split(".")
        if name in ("peers", "destinations"):
            assert f"[[{table}.{name}]]" in text
            continue
        assert f"[{table}]" in text and (f"\n{name} =" in text or f"# {name} =" in text), key


def test_environment_overrides_a_single_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "n.toml"
    config.write_text('[node]\nport = 2000\nae_title = "FILE"\n')
    monkeypatch.setenv("MSVLM_NODE_NODE__PORT", "3000")
    settings = load_settings(config)
    assert settings.node.port == 3000
    assert settings.node.ae_title == "FILE"


def test_config_env_variable_picks_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "n.toml"
    config.write_text('[database]\nurl = "sqlite:///x.db"\n')
    monkeypatch.setenv("MSVLM_NODE_CONFIG", str(config))
    assert load_settings().database.url == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node]\nprot = 1\n", "node.prot: unknown key"),
        ("[node]\nport = 70000\n", "node.port:"),
        ('[node]\nae_title = "A_TITLE_FAR_TOO_LONG"\n', "node.ae_title:"),
        ('[storage]\nfsync = "maybe"\n', "storage.fsync:"),
        ('[[security.peers]]\nhost = "1.2.3.4"\n', "security.peers.0.ae_title:"),
        ("[nonsense]\n", "nonsense: unknown key"),
        ("[node\n", "not valid TOML"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_settings(config)
