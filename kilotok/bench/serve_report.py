"""The printed table and the JSON file of `kilotok bench serve`.

One JSON file holds several configurations (say, with and without speculation), each with the machine,
command line and settings it ran with and its per-level figures, so they can be drawn on one chart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from kilotok.bench.serve_stats import LevelSummary
from kilotok.errors import InvalidRequestError

SCHEMA = "kilotok-bench-serve/1"
LEVEL_FIELDS = tuple(item.name for item in fields(LevelSummary))


@dataclass
class ConfigurationResult:
    """One configuration's run: its label (the plot's legend entry) and what each level measured."""

    label: str
    command_line: list[str]
    machine: dict[str, object]
    config: dict[str, object]
    levels: list[LevelSummary] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"label": self.label, "command_line": self.command_line, "machine": self.machine,
                "config": self.config, "levels": [asdict(level) for level in self.levels]}

    @classmethod
    def from_json(cls, record: dict, where: str) -> ConfigurationResult:
        try:
            levels = [LevelSummary(**{name: level[name] for name in LEVEL_FIELDS}) for level in record["levels"]]
            return cls(record["label"], list(record["command_line"]), dict(record["machine"]),
                       dict(record["config"]), levels)
        except (KeyError, TypeError) as error:
            raise InvalidRequestError(f"{where}: a configuration is malformed ({error!r})") from None


def results_to_json(configurations: list[ConfigurationResult]) -> dict[str, object]:
    return {"schema": SCHEMA, "configurations": [configuration.to_json() for configuration in configurations]}


def read_results(path: Path) -> list[ConfigurationResult]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidRequestError(f"cannot read {path} to append to it: {error}") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise InvalidRequestError(
            f"{path} is not a `kilotok bench serve` results file (schema {SCHEMA}); "
            "choose another --out or drop --append to overwrite it"
        )
    return [ConfigurationResult.from_json(record, str(path)) for record in document["configurations"]]


def merge_configuration(
    existing: list[ConfigurationResult], new: ConfigurationResult
) -> list[ConfigurationResult]:
    """Add a configuration; a rerun under the same label replaces the earlier one, in its place."""
    labels = [configuration.label for configuration in existing]
    if new.label in labels:
        return [new if configuration.label == new.label else configuration for configuration in existing]
    return [*existing, new]


def write_results(path: Path, configurations: list[ConfigurationResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_to_json(configurations), indent=2) + "\n", encoding="utf-8")


def _cell(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def format_table(result: ConfigurationResult) -> str:
    header = ("conc", "requests", "failed", "tok/s/user med", "p10", "TTFT med ms", "p99 ms",
              "total tok/s", "accept len")
    rows = [header]
    for level in result.levels:
        rows.append((
            str(level.concurrency), str(level.num_requests), str(level.num_failed),
            _cell(level.median_tokens_per_s_per_user), _cell(level.p10_tokens_per_s_per_user),
            _cell(level.median_ttft_s, 1000), _cell(level.p99_ttft_s, 1000),
            _cell(level.total_output_tokens_per_s), _cell(level.acceptance_length, digits=2),
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([f"kilotok bench serve: {result.label}", *lines])
